"""Delay precision on a real broker: N sends with random countdowns, lateness = start - due.

    python scripts/delay_precision.py [--count 500] [--min 0.1] [--max 20]

Starts a worker (1 process) on a queue of its own, sends the tasks, waits for all of them, prints
lateness p50 / p99 / max (and the earliest, which must never be negative), then cleans up.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--min", type=float, default=0.1)
    parser.add_argument("--max", type=float, default=20.0)
    parser.add_argument("--broker", default=os.environ.get("AMQPTASKS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    options = parser.parse_args()

    queue = f"precision.{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="amqptasks-precision-"))
    done = workdir / "done.txt"
    (workdir / "precision_tasks.py").write_text(textwrap.dedent(f"""\
        import time
        from amqptasks import App
        app = App("precision_tasks")

        @app.task(queue={queue!r}, ignore_result=True)
        def stamp(tag):
            with open({str(done)!r}, "a") as f:
                f.write(f"{{tag}} {{time.time()}}\\n")
        """))
    env = dict(os.environ, AMQPTASKS_BROKER_URL=options.broker)
    worker = subprocess.Popen(
        [sys.executable, "-m", "amqptasks", "worker", "-A", "precision_tasks", "--queues", queue,
         "--processes", "1", "--loglevel", "warning"],
        cwd=workdir, env=env, start_new_session=True,
    )
    sys.path.insert(0, str(workdir))
    import precision_tasks  # generated above

    try:
        time.sleep(3)  # the worker declares its queue and starts consuming
        rng = random.Random(1)
        due: dict[str, float] = {}
        for n in range(options.count):
            countdown = rng.uniform(options.min, options.max)
            due[str(n)] = time.time() + countdown
            precision_tasks.stamp.apply_async(args=(str(n),), countdown=countdown)
        deadline = time.time() + options.max + 30
        started: dict[str, float] = {}
        while time.time() < deadline and len(started) < options.count:
            time.sleep(0.5)
            if done.exists():
                started = {tag: float(at) for tag, at in (line.split() for line in done.read_text().splitlines())}
        late_ms = sorted((started[tag] - due[tag]) * 1000 for tag in started)
        missing = options.count - len(started)
        print(f"{len(started)}/{options.count} tasks ran (delays {options.min}-{options.max} s), missing {missing}")
        print(
            f"lateness ms: min {late_ms[0]:.1f}  p50 {statistics.median(late_ms):.1f}  "
            f"p99 {late_ms[int(len(late_ms) * 0.99) - 1]:.1f}  max {late_ms[-1]:.1f}  "
            f"early {sum(1 for v in late_ms if v < 0)}"
        )
        return 0 if missing == 0 and late_ms[0] >= -2 else 1
    finally:
        precision_tasks.app.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=40)
        connection = pika.BlockingConnection(pika.URLParameters(options.broker))
        channel = connection.channel()
        for name in (queue, f"{queue}.dead", landing_queue("", queue), landing_queue("", f"{queue}.dead")):
            channel.queue_delete(name)
        connection.close()


if __name__ == "__main__":
    raise SystemExit(main())
