"""Which --threads / --prefetch should the worker default to? Drain rates side by side, one run.

    python scripts/bench_worker_defaults.py [--count 10000] [--repeats 2]

For each (threads, prefetch) pair, interleaved and repeated: pre-fill COUNT no-op tasks (each
appends one byte to a file), run ``amqptasks worker --processes 2 --burst``, and time from the
first completion to the last by watching the file grow. Prints tasks/s medians per pair.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pika

from amqptasks.core.delays import landing_queue

PAIRS = [(4, 16), (8, 8), (8, 32), (8, 128), (16, 64), (32, 128)]


def run_once(workdir: Path, queue: str, threads: int, prefetch: int, count: int, broker: str) -> float:
    out = workdir / "done.bin"
    out.write_bytes(b"")
    import defaults_tasks

    with defaults_tasks.app.batch():
        for _ in range(count):
            defaults_tasks.noop.delay()
    worker = subprocess.Popen(
        [sys.executable, "-m", "amqptasks", "worker", "-A", "defaults_tasks", "--queues", queue, "--processes", "2",
         "--threads", str(threads), "--prefetch", str(prefetch), "--loglevel", "warning", "--burst"],
        cwd=workdir, env=dict(os.environ, AMQPTASKS_BROKER_URL=broker),
    )
    first = last = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        size = out.stat().st_size
        now = time.perf_counter()
        if size and first is None:
            first = now
        if size >= count:
            last = now
            break
        time.sleep(0.002)
    worker.wait(timeout=60)
    if first is None or last is None:
        raise RuntimeError(f"threads={threads} prefetch={prefetch}: not all tasks completed")
    return count / (last - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--broker", default=os.environ.get("AMQPTASKS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    options = parser.parse_args()
    queue = f"defaults.{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="amqptasks-defaults-"))
    (workdir / "defaults_tasks.py").write_text(textwrap.dedent(f"""\
        from amqptasks import App
        app = App("defaults_tasks")

        @app.task(queue={queue!r}, ignore_result=True)
        def noop():
            with open({str(workdir / 'done.bin')!r}, "ab") as f:
                f.write(b".")
        """))
    sys.path.insert(0, str(workdir))
    # Declared as the worker declares a queue only --queues names (so the pre-fill has somewhere to go).
    from amqptasks.core.deadletter import implicit_queue
    from amqptasks.core.topology import Topology
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import apply

    work, dead = implicit_queue(queue)
    apply(Settings(broker_url=options.broker), Topology(queues={work.name: work, dead.name: dead}))
    rates: dict[tuple[int, int], list[float]] = {pair: [] for pair in PAIRS}
    try:
        for _ in range(options.repeats):
            for threads, prefetch in PAIRS:
                rates[(threads, prefetch)].append(run_once(workdir, queue, threads, prefetch, options.count, options.broker))
        for (threads, prefetch), values in rates.items():
            each = ", ".join(f"{v:,.0f}" for v in values)
            print(f"threads {threads:>3}  prefetch {prefetch:>4}: {statistics.median(values):8,.0f} tasks/s  ({each})")
    finally:
        import defaults_tasks

        defaults_tasks.app.close()
        connection = pika.BlockingConnection(pika.URLParameters(options.broker))
        channel = connection.channel()
        for name in (queue, f"{queue}.dead", landing_queue("", queue), landing_queue("", f"{queue}.dead")):
            channel.queue_delete(name)
        connection.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
