#!/usr/bin/env python
"""Candidate worker fixes, measured: the drain scenario for amqptasks as it is and monkeypatched.

    .venv/bin/python scripts/bench/experiment.py [--repeats 3] [--count 20000]

Interleaved like run.py (baseline, patch A, patch B, baseline, ...); prints median tasks/s and the
median of per-repeat ratios to the baseline. The patches live in tasks/bench_patches.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, median  # noqa: E402
from scenarios import Params, measure  # noqa: E402
from systems import System  # noqa: E402

VARIANTS = {
    "def": [
        System("at", "amqptasks def (as is)", "amqptasks"),
        System("at", "def + ack wait=False", "amqptasks", env={"patch": "nowait"}),
        System("at", "def + coalesced acks", "amqptasks", env={"patch": "coalesce"}),
        System("at", "def + batched thread handoff", "amqptasks", env={"patch": "handoff"}),
        System("at", "def + coalesced acks + handoff", "amqptasks", env={"patch": "coalesce+handoff"}),
    ],
    "async def": [
        System("at_async_def", "async def (as is)", "amqptasks"),
        System("at_async_def", "async def + coalesced acks", "amqptasks", env={"patch": "coalesce"}),
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--memory", action="store_true", help="idle worker memory, CLI vs no CLI, instead")
    args = parser.parse_args()
    if args.memory:
        return memory(args.repeats)
    with tempfile.TemporaryDirectory(prefix="amqptasks-exp-") as tmp:
        params = Params(1, args.count, 1, 1, 1.0, 1.0, 1.0, Path(tmp))
        for group, systems in VARIANTS.items():
            rates: dict[str, list[float | None]] = {s.label: [] for s in systems}
            for repeat in range(-1, args.repeats):
                for system in systems:
                    try:
                        sample = measure("drain", system, params.warmup() if repeat < 0 else params)
                    except BenchError as exc:
                        print(f"{system.label}: {exc}")
                        sample = {}
                    if repeat >= 0:
                        rates[system.label].append(sample.get("rate"))
            base = rates[systems[0].label]
            print(f"\n{group}: {args.count:,} tasks, 2 processes, {args.repeats} interleaved repeats")
            for label, values in rates.items():
                ratios = [v / b for v, b in zip(values, base, strict=True) if v and b]
                print(f"  {label:32s} {median(values) or 0:8,.0f} tasks/s   x{median(ratios) or 0:.2f} vs as-is")
    return 0


def memory(repeats: int) -> int:
    """RSS/PSS of an idle 2-process worker started by ``amqptasks worker`` and without typer."""
    systems = [System("at", "amqptasks worker (typer CLI)", "amqptasks"),
               System("at", "worker_main() without typer", "amqptasks_nocli")]
    with tempfile.TemporaryDirectory(prefix="amqptasks-exp-") as tmp:
        params = Params(1, 1, 1, 1, 1.0, 1.0, 3.0, Path(tmp))
        found: dict[str, list[tuple[float, float]]] = {s.label: [] for s in systems}
        for _ in range(repeats):
            for system in systems:
                sample = measure("memory", system, params)
                found[system.label].append((sample["rss_mb"], sample["pss_mb"]))
    for label, values in found.items():
        print(f"  {label:32s} RSS {median(v[0] for v in values) or 0:6.1f} MiB   PSS {median(v[1] for v in values) or 0:6.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
