"""A/B of the worker's delivery handling between two git revisions, in one run, alternating.

    .venv/bin/python scripts/bench_worker_ab.py --a 81d267c --b HEAD [--rounds 4] [--rpc 1500] [--batch 4000]
    .venv/bin/python scripts/bench_worker_ab.py --a 7374e83 --b HEAD --micro --rounds 10

Each revision's ``amqptasks`` package is exported (``git archive``) and run as the worker
(``--processes 1``); the producer is this checkout's. Two tasks: ``add`` declared
``inline=True`` where the revision knows the option (the event-loop fast path), and
``add_plain`` (a default ``def`` task). Scenarios: RPC p50 (sequential ``delay().get()``, after 200
warm-up calls, so a task that promotes has promoted) and a batch (``send_many`` of N then every
``get()``): tasks/s, and the worker's CPU time per task (user + system, its processes), which
other load on a shared machine disturbs far less than wall time. Prints medians and bests per
revision and the ratios b/a.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parents[1]
URL = os.environ.get("AMQPTASKS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

TASKS = """
from amqptasks import App
from amqptasks.errors import ConfigurationError

app = App({module!r})
QUEUE = {queue!r}

def add(x, y):
    return x + y

try:
    add = app.task(queue=QUEUE, name="add", inline=True)(add)
except ConfigurationError:  # a revision before inline=True: its def tasks promote themselves
    add = app.task(queue=QUEUE, name="add")(add)

@app.task(queue=QUEUE, name="add_plain")
def add_plain(x, y):
    return x + y
"""


# --micro: the worker's own code for one inline delivery (DeliveryHandler._handle_now, from the
# bytes off the socket to the ack queued), in-process with the broker I/O stubbed: CPU only, so a
# shared machine's load moves it far less than the end-to-end figures.
MICRO = """
import asyncio, sys, time
from types import SimpleNamespace
from amqptasks import App
from amqptasks.errors import ConfigurationError
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.handling import DONE, DeliveryHandler

app = App("micro")
def add(x, y):
    return x + y
try:
    add = app.task(name="add", queue="q", inline=True)(add)
except ConfigurationError:
    add = app.task(name="add", queue="q")(add)
item = add.prepare((1, 2))
p = item.properties
props = SimpleNamespace(reply_to="amq.rabbitmq.reply-to.abc", headers=p.headers, content_type=p.content_type,
                        priority=p.priority)
channel = object()
delivery = SimpleNamespace(body=item.body, header=SimpleNamespace(properties=props),
                           delivery=SimpleNamespace(delivery_tag=1, redelivered=False), channel=channel)

async def main():
    handler = DeliveryHandler(app, WorkerConfig(queues=("q",)), "W", asyncio.Event())
    handler._acks = SimpleNamespace(channel=channel, ack=lambda tag: None)
    handler._replies = SimpleNamespace(publish_now=lambda *a: True)
    for _ in range(64):
        handler._inline.ran_on_thread("add", 0.0)
    # No demotion: one call preempted for 10 ms on a loaded machine would end the measurement.
    handler._inline.ran_inline = lambda task, seconds: False
    assert handler._handle_now(delivery, "q") is DONE
    n = int(sys.argv[1])
    started = time.process_time()
    for _ in range(n):
        handler._handle_now(delivery, "q")
    assert handler._inline.runs_inline("add", False)
    print((time.process_time() - started) / n * 1e6)

asyncio.run(main())
"""


def micro(tree: Path, calls: int) -> float:
    done = subprocess.run([sys.executable, "-c", MICRO, str(calls)], env=dict(os.environ, PYTHONPATH=str(tree)),
                          cwd=tree.parent, check=True, capture_output=True, text=True)
    return float(done.stdout.strip())


def export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "amqptasks"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    check = subprocess.run(
        [sys.executable, "-c", "import amqptasks; print(amqptasks.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(into)), cwd=into.parent, check=True, capture_output=True, text=True,
    ).stdout.strip()
    if not check.startswith(str(into)):
        raise SystemExit(f"revision {rev}: the worker would import {check}, not the exported tree")
    return into


def wait_consumer(queue: str, worker: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited {worker.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        try:
            if connection.channel().queue_declare(queue, passive=True).method.consumer_count:
                return
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if connection.is_open:
                connection.close()
        time.sleep(0.2)
    raise SystemExit(f"no consumer on {queue} after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (the consumer processes), from /proc: less
    sensitive than wall time to other load on a shared machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def delete(queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for name in (queue, f"{queue}.dead"):
            connection.channel().queue_delete(name)
    finally:
        connection.close()


def measure(tree: Path, workdir: Path, label: str, rpc: int, batch: int) -> dict[str, float]:
    queue = f"bench-ab-{uuid.uuid4().hex[:8]}"
    module = f"ab_{label}_{uuid.uuid4().hex[:6]}"
    (workdir / f"{module}.py").write_text(textwrap.dedent(TASKS.format(module=module, queue=queue)))
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{workdir}", AMQPTASKS_BROKER_URL=URL)
    log = (workdir / f"{module}.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "amqptasks", "worker", "-A", module, "-Q", queue, "--processes", "1", "-l", "warning"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    sys.path.insert(0, str(workdir))
    try:
        wait_consumer(queue, worker, workdir / f"{module}.log")
        tasks = importlib.import_module(module)
        out: dict[str, float] = {}
        for name in ("add", "add_plain"):
            task = getattr(tasks, name)
            for i in range(200):
                assert task.delay(i, 1).get(timeout=30) == i + 1
            times = []
            for i in range(rpc):
                started = time.perf_counter()
                task.delay(i, 2).get(timeout=30)
                times.append(time.perf_counter() - started)
            out[f"rpc p50 µs {name}"] = statistics.median(times) * 1e6
            cpu = cpu_seconds(worker.pid)
            started = time.perf_counter()
            results = tasks.app.send_many([task.s(i, 3) for i in range(batch)])
            assert [r.get(timeout=60) for r in results] == [i + 3 for i in range(batch)]
            out[f"batch tasks/s {name}"] = batch / (time.perf_counter() - started)
            out[f"worker CPU µs/task {name}"] = (cpu_seconds(worker.pid) - cpu) / batch * 1e6
        tasks.app.close()
        return out
    finally:
        sys.path.remove(str(workdir))
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        delete(queue)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", default="HEAD")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rpc", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--micro", action="store_true", help="only the in-process CPU time of one inline delivery")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        trees = {"a": export(args.a, base / "a"), "b": export(args.b, base / "b")}
        samples: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
        for round_ in range(args.rounds):
            for label in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
                if args.micro:
                    results = {"inline delivery CPU µs (micro)": micro(trees[label], 100_000)}
                else:
                    results = measure(trees[label], base, label, args.rpc, args.batch)
                for key, value in results.items():
                    samples[label].setdefault(key, []).append(value)
        load = os.getloadavg()[0]
        print(f"A = {args.a}, B = {args.b}; {args.rounds} alternating rounds; worker --processes 1; "
              f"load average at the end {load:.1f} on {os.cpu_count()} CPUs (compare in one run only)")
        print("| metric | A median | B median | B/A median | A best | B best | B/A best |\n|---|---|---|---|---|---|---|")
        for key in samples["a"]:
            a, b = statistics.median(samples["a"][key]), statistics.median(samples["b"][key])
            best = max if key.startswith("batch") else min  # throughput: highest; latency and CPU: lowest
            a_best, b_best = best(samples["a"][key]), best(samples["b"][key])
            print(f"| {key} | {a:,.1f} | {b:,.1f} | {b / a:.2f} | {a_best:,.1f} | {b_best:,.1f} | {b_best / a_best:.2f} |")
        print("samples:", {label: {k: [round(v, 1) for v in vs] for k, vs in d.items()} for label, d in samples.items()})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
