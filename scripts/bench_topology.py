#!/usr/bin/env python
"""Time topology apply against a real broker: 1,000 queues, each bound to one exchange.

Prints first apply and no-op re-apply for the pika and aio-pika adapters, with the management
API and with declare probes only (``--management-url off``), then deletes everything it made.

    .venv/bin/python scripts/bench_topology.py [--queues 1000] [--broker URL]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from amqptasks.aio.connection import aconnect
from amqptasks.aio.topology import aapply
from amqptasks.core.declare import ApplyResult
from amqptasks.core.loader import load_topology_text
from amqptasks.core.topology import Topology
from amqptasks.settings import Settings
from amqptasks.sync.connection import connect
from amqptasks.sync.topology import apply

Timings = list[tuple[str, float, str]]


def topology_yaml(prefix: str, queues: int) -> str:
    """One direct exchange and ``queues`` durable queues, each bound with its own routing key."""
    lines = ["exchanges:", f"  {prefix}.x: {{type: direct}}", "queues:"]
    for i in range(queues):
        lines += [f"  {prefix}.q{i}:", "    message_ttl: 1h",
                  "    bindings:", f"      - {{exchange: {prefix}.x, routing_key: k{i}}}"]
    return "\n".join(lines) + "\n"


def timed(timings: Timings, label: str, run: Callable[[], ApplyResult]) -> None:
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    summary = result.render().splitlines()[-1]
    timings.append((label, elapsed, summary))
    print(f"{label:<40} {elapsed:6.2f} s   {summary[:90]}", flush=True)


def bench_sync(settings: Settings, topology: Topology, timings: Timings, mode: str, management: str | None) -> None:
    connection = connect(settings, "amqptasks bench_topology sync")
    try:
        timed(timings, f"sync {mode}: first apply", lambda: apply(connection, topology, management_url=management))
        timed(timings, f"sync {mode}: re-apply", lambda: apply(connection, topology, management_url=management))
    finally:
        connection.close()


def bench_aio(settings: Settings, topology: Topology, timings: Timings, mode: str, management: str | None) -> None:
    async def run() -> None:
        connection = await aconnect(settings, "amqptasks bench_topology aio")
        try:
            for label in ("first apply", "re-apply"):
                started = time.perf_counter()
                result = await aapply(connection, topology, management_url=management)
                elapsed = time.perf_counter() - started
                summary = result.render().splitlines()[-1]
                timings.append((f"aio {mode}: {label}", elapsed, summary))
                print(f"{'aio ' + mode + ': ' + label:<40} {elapsed:6.2f} s   {summary[:90]}", flush=True)
        finally:
            await connection.close()

    asyncio.run(run())


def delete_all(settings: Settings, topology: Topology) -> None:
    """Delete the bench's queues and exchanges, 16 channels at a time."""
    async def run() -> None:
        connection = await aconnect(settings, "amqptasks bench_topology cleanup")
        try:
            channels = [await connection.channel(publisher_confirms=False) for _ in range(16)]
            names = list(topology.queues)
            jobs: list[Awaitable[Any]] = [channels[i % 16].queue_delete(name) for i, name in enumerate(names)]
            await asyncio.gather(*jobs)
            for name in topology.exchanges:
                await channels[0].exchange_delete(name)
        finally:
            await connection.close()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--broker", default=None, help="default: $AMQPTASKS_BROKER_URL, then localhost")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.broker)
    timings: Timings = []
    scenarios: list[tuple[str, Callable[..., None], str | None]] = [
        ("management", bench_sync, None),
        ("probes", bench_sync, "off"),
        ("management", bench_aio, None),
        ("probes", bench_aio, "off"),
    ]
    for mode, bench, management in scenarios:
        prefix = f"bench.{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        topology = load_topology_text(topology_yaml(prefix, args.queues), f"{prefix}.yaml")
        print(f"loaded {args.queues} queues + {len(topology.bindings)} bindings in "
              f"{time.perf_counter() - started:.2f} s", flush=True)
        try:
            bench(settings, topology, timings, mode, management)
        finally:
            delete_all(settings, topology)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
