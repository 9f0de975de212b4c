"""A quorum queue's delivery limit against the worker's stops, and the broker's reasons in ``dlq list``.

Every give-back counts towards ``x-delivery-limit`` (reject/nack with requeue, cancel, channel or
connection close: scripts/measure_delivery_count.py), so a worker that requeued what it had
prefetched at each stop would get messages dead-lettered that never ran (worker/release.py).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from amqptasks.cli import cli
from tests.integration.test_worker import close_app, import_tasks
from tests.integration.workerproc import (
    WorkerProcess,
    done_lines,
    drain,
    queue_counts,
    wait_for,
    write_app,
)

STOPS = 25
LIMIT = 20  # the built-in topology's, and RabbitMQ 4.0's default
TASK_COUNT = 60

QUORUM_TOPOLOGY = """\
exchanges:
  {q}.dlx: {{type: direct}}
queues:
  {q}:
    type: quorum
    delivery_limit: {limit}
    dead_letter: {{exchange: {q}.dlx, routing_key: {q}.dead}}
  {q}.dead:
    type: quorum
    delivery_limit: 1000000
    bindings: [{{exchange: {q}.dlx, routing_key: {q}.dead}}]
"""

TASKS = """
@app.task(queue=QUEUE, bind=True)
def slow(self, n):
    time.sleep(0.2)
    record(f"{n} {self.request.id}")
"""


@pytest.fixture
def quorum_app(tmp_path: Path, unique: str, cleanup: Any) -> Iterator[tuple[Path, str, str]]:
    """A generated tasks module (task ``slow``) on its own quorum queue with a delivery limit."""
    queue, module = unique, f"dl_{unique.rsplit('.', 1)[-1]}"
    cleanup.queue(queue)
    cleanup.queue(f"{queue}.dead")
    cleanup.exchange(f"{queue}.dlx")
    topology = write_app(tmp_path, module, queue, f"QUEUE = {queue!r}\n" + TASKS)
    topology.write_text(QUORUM_TOPOLOGY.format(q=queue, limit=LIMIT))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path, queue, module
    sys.path.remove(str(tmp_path))


@pytest.mark.timeout(600)
def test_graceful_stops_do_not_spend_the_delivery_limit(quorum_app: tuple[Path, str, str], broker_url: str) -> None:
    """25 graceful stops of a worker holding prefetched messages: none is dead-lettered without
    having run (with requeues at each stop, those prefetched through 21 stops were)."""
    directory, queue, module = quorum_app
    tasks = import_tasks(directory, module)
    try:
        with tasks.app.batch():
            for n in range(TASK_COUNT):
                tasks.slow.delay(n)
    finally:
        close_app(tasks)
    for stop in range(STOPS):
        before = len(done_lines(directory))
        worker = WorkerProcess(directory, broker_url, "-A", module, "--queues", queue, "--processes", "1",
                               "--threads", "1", "--prefetch", "100", "--loglevel", "info")
        try:
            # One task done: the worker holds the rest of the queue prefetched, unstarted.
            assert wait_for(lambda b=before: len(done_lines(directory)) > b, 60), worker.log
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0, f"stop {stop}: {worker.log}"
        finally:
            worker.stop()
        assert queue_counts(broker_url, f"{queue}.dead")[0] == 0, f"dead-lettered after stop {stop + 1}"
    finisher = WorkerProcess(directory, broker_url, "-A", module, "--queues", queue, "--processes", "1", "--burst",
                             "--loglevel", "warning")
    assert finisher.wait(timeout=120) == 0, finisher.log
    dead = drain(broker_url, f"{queue}.dead")
    reasons = Counter(str((p.headers or {}).get("x-first-death-reason")) for p, _ in dead)
    assert not dead, f"{len(dead)} message(s) dead-lettered without having run: {dict(reasons)}"
    runs = Counter(line.split()[0] for line in done_lines(directory))
    assert set(runs) == {str(n) for n in range(TASK_COUNT)}
    assert max(runs.values()) == 1, f"ran twice: {[n for n, c in runs.items() if c > 1]}"


def test_dlq_list_shows_why_the_broker_dead_lettered(quorum_app: tuple[Path, str, str], broker_url: str) -> None:
    """delivery_limit (of a delayed task: not the delay cascade's "expired"), expired (TTL), maxlen
    (overflow) and rejected, each with its reason."""
    directory, queue, module = quorum_app
    dead = f"{queue}.dead"
    tasks = import_tasks(directory, module)
    try:
        # Through the delay cascade first: its levels add x-death "expired" entries before the
        # queue's delivery limit adds its own, the latest.
        tasks.slow.apply_async(args=(1,), task_id="over-the-limit", countdown=1)
    finally:
        close_app(tasks)
    assert wait_for(lambda: queue_counts(broker_url, queue)[0] == 1, 30)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        # delivery_limit: given back LIMIT + 1 times (the queue is declared with LIMIT by the app).
        for _ in range(LIMIT + 1):
            method, _props, _body = channel.basic_get(queue)
            assert method is not None
            channel.basic_nack(method.delivery_tag, requeue=True)
        assert wait_for(lambda: queue_counts(broker_url, dead)[0] == 1, 10)
        # The others through side queues of this test, dead-lettered into the same dead queue.
        side = {
            "expired": {"x-message-ttl": 1},
            "maxlen": {"x-max-length": 1, "x-overflow": "drop-head"},
            "rejected": {},
        }
        for reason, extra in side.items():
            name = f"{queue}.{reason}"
            channel.queue_declare(name, durable=True, arguments={
                "x-dead-letter-exchange": f"{queue}.dlx", "x-dead-letter-routing-key": dead, **extra})
            channel.basic_publish("", name, b"{}", pika.BasicProperties(message_id=f"by-{reason}", delivery_mode=2,
                                                                          headers={"id": f"by-{reason}"}))
            if reason == "maxlen":
                channel.basic_publish("", name, b"{}", pika.BasicProperties(message_id="keeps", delivery_mode=2))
            if reason == "rejected":
                method, _props, _body = channel.basic_get(name)
                channel.basic_reject(method.delivery_tag, requeue=False)
        assert wait_for(lambda: queue_counts(broker_url, dead)[0] == 4, 10)
        for reason in side:
            channel.queue_delete(f"{queue}.{reason}")
    finally:
        connection.close()
    result = CliRunner().invoke(cli, ["dlq", "list", dead, "--broker", broker_url])
    assert result.exit_code == 0, result.output
    for task_id, reason in (("over-the-limit", "delivery_limit"), ("by-expired", "expired"),
                            ("by-maxlen", "maxlen"), ("by-rejected", "rejected")):
        row = next((line for line in result.output.splitlines() if task_id in line), "")
        assert reason in row, f"{task_id}: no {reason!r} in its row:\n{result.output}"
