#!/usr/bin/env python
"""The amqptasks benchmark suite: amqptasks against Celery, Dramatiq, FastStream, Taskiq and raw
pika / aio-pika, on one RabbitMQ, interleaved (A B C A B C ...) after a warm-up round.

    .venv/bin/python scripts/bench/run.py [--quick] [--scenarios publish,drain,io,rpc,memory,delay]
                                          [--repeats N] [--systems KEY,...] [--profile]

Writes results/bench.json, results/bench.md and results/bench.png (and, with --profile,
results/profile-*.txt). Compare ratios measured in one run, never absolute figures across runs:
the machine is shared with the broker. Broker URL: BENCH_URL (default the local guest account);
for a broker on another port also set BENCH_MANAGEMENT_URL (amqptasks diffs its topology there).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from common import RESULTS, URL, BenchError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scenarios import Params, Sample, measure
from systems import IO_CEILING, SCENARIOS, System

console = Console()


def sizes(quick: bool, workdir: Path) -> Params:
    if quick:
        return Params(publish=2_000, drain=4_000, io=5_000, rpc=300, delay=40, delay_low=0.5, delay_high=2.0,
                      settle=2.0, workdir=workdir)
    return Params(publish=20_000, drain=20_000, io=5_000, rpc=2_000, delay=200, delay_low=1.0, delay_high=5.0,
                  settle=3.0, workdir=workdir)


def size_text(scenario: str, p: Params) -> str:
    return {
        "publish": f"{p.publish:,} tasks per system and repeat",
        "drain": f"{p.drain:,} no-op tasks pre-filled, timed first to last completion",
        "io": f"{p.io:,} tasks pre-filled that each sleep 10 ms, 64 at once per system, timed first to last "
              f"completion; ceiling 64 / 10 ms = {IO_CEILING:,.0f} tasks/s",
        "rpc": f"{p.rpc:,} sequential round trips",
        "memory": f"idle worker, RSS of all its processes after {p.settle:g}s",
        "delay": f"{p.delay} tasks, countdowns uniform in {p.delay_low:g}–{p.delay_high:g}s",
    }[scenario]


def broker_version() -> str:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        version = connection._impl.server_properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def broker_up(wait: float) -> bool:
    """Whether the broker completes an AMQP handshake within ``wait`` seconds (retrying)."""
    import pika

    parameters = pika.URLParameters(URL + ("&" if "?" in URL else "?") + "connection_attempts=1&socket_timeout=5")
    deadline = time.monotonic() + wait
    while True:
        try:
            pika.BlockingConnection(parameters).close()
            return True
        except Exception:  # any failure to connect counts as down
            if time.monotonic() > deadline:
                return False
            time.sleep(2)


def run_suite(scenarios: list[str], repeats: int, params: Params, only: set[str] | None,
              save: Callable[[dict[str, dict[str, list[Sample]]]], object]) -> dict[str, dict[str, list[Sample]]]:
    """Every scenario, interleaved; ``save`` gets the samples so far after each scenario.

    Stops early (keeping what was measured) if the broker stops answering for 2 minutes.
    """
    plan: list[tuple[str, list[System]]] = [
        (s, [system for system in SCENARIOS[s] if not only or system.key in only]) for s in scenarios
    ]
    total = sum(len(systems) * (repeats + 1) for _, systems in plan)
    samples: dict[str, dict[str, list[Sample]]] = {}
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("starting", total=total)
        for scenario, systems in plan:
            samples[scenario] = {system.key: [] for system in systems}
            for repeat in range(-1, repeats):  # -1: the warm-up round, not recorded
                warm = repeat < 0
                for system in systems:
                    label = "warm-up" if warm else f"{repeat + 1}/{repeats}"
                    progress.update(bar, description=f"{scenario} {label} {system.key}")
                    if not broker_up(120):
                        progress.console.print("[red]the broker does not answer: stopping the suite")
                        return samples
                    try:
                        sample = measure(scenario, system, params.warmup() if warm else params)
                    except BenchError as exc:
                        sample = {"error": str(exc).splitlines()[0][:300]}
                        progress.console.print(f"[yellow]{scenario} {system.key}: {str(exc)[:600]}")
                    except Exception as exc:  # one system's bug must not end the whole suite
                        sample = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                        progress.console.print(f"[red]{scenario} {system.key}: {type(exc).__name__}: {exc}")
                    if not warm:
                        samples[scenario][system.key].append(sample)
                    progress.advance(bar)
            save(samples)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS) + " (empty: none, e.g. with --profile)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="measured repeats (default 3, --quick 2)")
    parser.add_argument("--systems", default="", help="only these system keys (debugging)")
    parser.add_argument("--profile", action="store_true", help="also profile the amqptasks worker and producers")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    repeats = args.repeats or (2 if args.quick else 3)
    only = {s.strip() for s in args.systems.split(",") if s.strip()} or None
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="amqptasks-bench-") as tmp:
        params = sizes(args.quick, Path(tmp))
        meta: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python scripts/bench/run.py " + shlex.join(sys.argv[1:]),
            "machine": f"{os.cpu_count()} CPUs shared with RabbitMQ {broker_version()}, Python {platform.python_version()}",
            "broker": URL.split("@")[-1],  # host:port/vhost, never the credentials
            "repeats": repeats,
            "quick": args.quick,
            "sizes": {s: size_text(s, params) for s in scenarios},
            "loadavg_before": os.getloadavg(),
        }
        if scenarios:
            def save(partial: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
                meta["loadavg_after"] = os.getloadavg()
                meta["seconds"] = round(time.time() - started)
                return report.write(args.results, meta, partial)

            data = save(run_suite(scenarios, repeats, params, only, save))
            print((args.results / "bench.md").read_text())
            missed = [t for t in data["targets"] if t["met"] is False]
            console.print(f"wrote {args.results}/bench.json, bench.md, bench.png in {meta['seconds']}s; "
                          f"{len(missed)} target(s) missed")
        if args.profile:
            import profiles

            profiles.run_all(args.results, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
