#!/usr/bin/env python
"""A/B a worker change: the drain scenario for amqptasks at a git revision and as in this tree.

    .venv/bin/python scripts/bench/experiment.py [--against HEAD] [--repeats 3] [--count 20000]
                                                 [--scenario drain|io] [--kinds def,async]
    .venv/bin/python scripts/bench/experiment.py --memory [--against HEAD]

The revision is exported with ``git archive`` into a temporary folder and imported instead of
this tree (BENCH_CODE). Interleaved like run.py (revision, tree, revision, tree, ...) after a
warm-up; prints median tasks/s and the median of per-repeat ratios tree / revision.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, BenchError, median
from scenarios import Params, measure
from systems import System


def export(revision: str, into: Path) -> Path:
    """The ``amqptasks`` package as of ``revision``, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "amqptasks"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def variants(key: str, label: str, revision: str, code: Path, env: dict[str, object] | None = None) -> list[System]:
    env = env or {}
    return [
        System(key, f"{label} @ {revision}", "amqptasks", env={**env, "code": str(code)}),
        System(key, f"{label} (this tree)", "amqptasks", env=env),
    ]


# The scenario's amqptasks contenders: (key, label, env), e.g. io's sleeping tasks.
KINDS = {
    "drain": {"def": ("at", "def", {}), "async": ("at_async_def", "async def", {})},
    "io": {"def": ("at", "def", {"task": "sleepy"}), "async": ("at_async_def", "async def", {"task": "asleepy"})},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD", help="git revision to compare with (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=None, help="tasks (default 20000 for drain, 5000 for io)")
    parser.add_argument("--scenario", choices=list(KINDS), default="drain")
    parser.add_argument("--kinds", default="def,async", help="which tasks: def, async or both")
    parser.add_argument("--memory", action="store_true", help="idle 2-process worker memory instead of drain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="amqptasks-exp-") as tmp:
        code = export(args.against, Path(tmp))
        if args.memory:
            return memory(variants("at", "amqptasks worker", args.against, code), args.repeats, Path(tmp))
        count = args.count or (5_000 if args.scenario == "io" else 20_000)
        params = Params(1, count, count, 1, 1, 1.0, 1.0, 1.0, Path(tmp))
        for kind in args.kinds.split(","):
            key, label, env = KINDS[args.scenario][kind.strip()]
            systems = variants(key, label, args.against, code, env)
            rates: dict[str, list[float | None]] = {s.label: [] for s in systems}
            for repeat in range(-1, args.repeats):
                for system in systems:
                    try:
                        sample = measure(args.scenario, system, params.warmup() if repeat < 0 else params)
                    except BenchError as exc:
                        print(f"{system.label}: {exc}")
                        sample = {}
                    if repeat >= 0:
                        rates[system.label].append(sample.get("rate"))
            base = rates[systems[0].label]
            print(f"\n{args.scenario} {label}: {count:,} tasks, 2 processes, {args.repeats} interleaved repeats")
            for name, values in rates.items():
                ratios = [v / b for v, b in zip(values, base, strict=True) if v and b]
                print(f"  {name:32s} {median(values) or 0:8,.0f} tasks/s   x{median(ratios) or 0:.2f}")
    return 0


def memory(systems: list[System], repeats: int, tmp: Path) -> int:
    """RSS (summed over the worker's processes) and PSS of an idle 2-process worker."""
    params = Params(1, 1, 1, 1, 1, 1.0, 1.0, 3.0, tmp)
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
