"""Broker-side delays and retries, end to end: countdown, precision, retries, dead letters, replay."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from typer.testing import CliRunner

from amqptasks.cli import cli
from amqptasks.core.delays import delay_infrastructure, entry_exchange, landing_queue
from amqptasks.errors import TaskError
from tests.integration.test_worker import close_app, import_tasks
from tests.integration.workerproc import (
    WorkerProcess,
    done_lines,
    drain,
    queue_counts,
    running_worker,
    wait_for,
    write_app,
)

TASKS = """
@app.task(queue=QUEUE)
def stamp(tag):
    record(f"{tag} {time.time()}")

@app.task(queue=QUEUE, bind=True, max_retries=3)
def flaky(self, fail_times):
    record(f"flaky {self.request.retries}")
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"), countdown=0.2)
    return f"ok after {self.request.retries} retries"

@app.task(queue=QUEUE, bind=True, max_retries=3)
def slow_flaky(self, seconds):
    record(f"slow {self.request.retries} {self.request.redelivered}")
    if self.request.retries < 1:
        time.sleep(seconds)
        raise self.retry(countdown=0.2)
    return "done"

@app.task(queue=QUEUE, max_retries=3, autoretry_for=(ConnectionError,), default_retry_delay=0.2)
def doomed():
    record("doomed")
    raise ConnectionError("still down")
"""


@pytest.fixture
def workdir(tmp_path: Path, unique: str, cleanup, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    queue = unique
    for name in (queue, f"{queue}.dead"):
        cleanup.queue(name)
    cleanup.exchange(f"{queue}.dlx")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, queue


def make_tasks(directory: Path, queue: str, module: str) -> None:
    write_app(directory, module, queue, f"QUEUE = {queue!r}\n" + TASKS)


def started_at(directory: Path) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in done_lines(directory) if not line.startswith(("flaky", "doomed", "slow"))}


def test_countdown_waits_in_the_broker_not_in_the_worker(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "dl_countdown")
    with running_worker(directory, broker_url, "dl_countdown", queue) as worker:
        tasks = import_tasks(directory, "dl_countdown")
        sent = time.time()
        tasks.stamp.apply_async(args=("late",), countdown=2)
        close_app(tasks)
        time.sleep(1.0)
        # Waiting: not in the target queue, not delivered to (held by) the worker.
        assert queue_counts(broker_url, queue) == (0, 1)
        assert "Received task" not in worker.log
        assert wait_for(lambda: "late" in started_at(directory), 10)
    assert started_at(directory)["late"] - sent >= 2.0


def test_delays_are_never_early_and_keep_close_to_due(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "dl_precision")
    worker = WorkerProcess(directory, broker_url, "-A", "dl_precision", "--queues", queue, "--processes", "1", "--loglevel", "warning")
    due: dict[str, float] = {}
    try:
        worker.wait_consuming(queue)
        tasks = import_tasks(directory, "dl_precision")
        rng = random.Random(7)
        for n in range(60):
            countdown = rng.uniform(0.1, 3.0)
            due[str(n)] = time.time() + countdown
            tasks.stamp.apply_async(args=(str(n),), countdown=countdown)
        close_app(tasks)
        assert wait_for(lambda: len(started_at(directory)) == 60, 20)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
    lateness = sorted(started_at(directory)[tag] - due[tag] for tag in due)
    assert lateness[0] >= -0.002, lateness[:3]  # never early (2 ms: clock reads on both sides)
    assert lateness[int(len(lateness) * 0.99) - 1] < 0.5, lateness[-5:]


def test_retries_then_success_and_dead_letter_after_the_last_retry(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "dl_retry")
    with running_worker(directory, broker_url, "dl_retry", queue):
        tasks = import_tasks(directory, "dl_retry")
        assert tasks.flaky.delay(2).get(timeout=20) == "ok after 2 retries"
        doomed = tasks.doomed.delay()
        with pytest.raises(TaskError) as caught:
            doomed.get(timeout=20)
        close_app(tasks)
        assert caught.value.exc_type == "ConnectionError" and caught.value.exc_message == "still down"
        assert wait_for(lambda: queue_counts(broker_url, f"{queue}.dead")[0] == 1, 5)
        assert done_lines(directory).count("doomed") == 4  # the first run and 3 retries
        listed = CliRunner().invoke(cli, ["dlq", "list", f"{queue}.dead", "--broker", broker_url])
        assert listed.exit_code == 0 and "ConnectionError: still down" in listed.stdout
        assert queue_counts(broker_url, f"{queue}.dead")[0] == 1  # listing leaves it there
        replayed = CliRunner().invoke(cli, ["dlq", "replay", f"{queue}.dead", "--broker", broker_url])
        assert replayed.exit_code == 0 and "replayed 1 message(s)" in replayed.stdout, replayed.output
        assert wait_for(lambda: done_lines(directory).count("doomed") == 8, 20)  # ran again, retries reset
        assert wait_for(lambda: queue_counts(broker_url, f"{queue}.dead")[0] == 1, 10)
    assert [line for line in done_lines(directory) if line.startswith("flaky")] == ["flaky 0", "flaky 1", "flaky 2"]
    [(properties, _body)] = drain(broker_url, f"{queue}.dead")
    assert properties.headers["retries"] == 3
    assert properties.headers["x-exception-type"] == "ConnectionError"
    assert "max_retries=3 exceeded" in properties.headers["x-amqptasks-reason"]


@pytest.fixture
def own_cascade(broker_url: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A delay cascade of this test's own (an hour-long delay must not outlive the test)."""
    prefix = f"{unique}.delay"
    monkeypatch.setenv("AMQPTASKS_DELAY_PREFIX", prefix)
    # Classic: creating and deleting 135 quorum queues per run is churn that wedged RabbitMQ 3.10.
    monkeypatch.setenv("AMQPTASKS_DELAY_QUEUE_TYPE", "classic")
    yield prefix
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        cascade = delay_infrastructure(prefix=prefix, queue_type="classic")
        for name in cascade.queues:
            channel.queue_delete(name)
        for queue in (unique, f"{unique}.dead"):  # workers give every queue a landing queue
            channel.queue_delete(landing_queue("", queue, prefix=prefix))
        for name in cascade.exchanges:
            channel.exchange_delete(name)
    finally:
        connection.close()


def delayed_count(broker_url: str, prefix: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        cascade = delay_infrastructure(prefix=prefix, queue_type="classic")
        return sum(channel.queue_declare(q, passive=True).method.message_count for q in cascade.queues)
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_long_delays_never_block_short_ones_and_survive_a_killed_worker(
    workdir: tuple[Path, str], broker_url: str, own_cascade: str
) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "dl_long")
    worker = WorkerProcess(directory, broker_url, "-A", "dl_long", "--queues", queue, "--processes", "1", "--loglevel", "warning")
    due: dict[str, float] = {}
    try:
        worker.wait_consuming(queue)
        tasks = import_tasks(directory, "dl_long")
        with tasks.app.batch():
            for n in range(100):
                tasks.stamp.apply_async(args=(f"long-{n}",), countdown=3600)
        rng = random.Random(11)
        for n in range(1000):
            countdown = rng.uniform(1.0, 10.0)
            due[f"short-{n}"] = time.time() + countdown
            tasks.stamp.apply_async(args=(f"short-{n}",), countdown=countdown)
        close_app(tasks)
        assert wait_for(lambda: len(started_at(directory)) >= 1000, 40)
        lateness = sorted(started_at(directory)[tag] - due[tag] for tag in due)
        assert lateness[0] >= -0.002 and lateness[-1] < 2.0, (lateness[0], lateness[-1])
        assert not any(tag.startswith("long") for tag in started_at(directory))
        assert delayed_count(broker_url, own_cascade) == 100
        worker.kill_group()
        worker.wait()
    finally:
        worker.stop()
    second = WorkerProcess(directory, broker_url, "-A", "dl_long", "--queues", queue, "--processes", "1")
    try:
        second.wait_consuming(queue)
        assert delayed_count(broker_url, own_cascade) == 100  # nothing lost, nothing delivered early
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
    assert os.environ["AMQPTASKS_DELAY_PREFIX"] == own_cascade


def test_a_task_delivered_after_it_expired_is_dead_lettered_not_run(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "dl_expired")
    tasks = import_tasks(directory, "dl_expired")
    result = tasks.stamp.apply_async(args=("stale",), expires=0.3)  # no worker yet
    time.sleep(0.6)
    worker = WorkerProcess(directory, broker_url, "-A", "dl_expired", "--queues", queue, "--processes", "1", "--burst")
    with pytest.raises(TaskError) as caught:
        result.get(timeout=20)
    close_app(tasks)
    assert worker.wait(timeout=30) == 0, worker.log
    assert caught.value.exc_type == "TaskExpired"
    assert "stale" not in started_at(directory)
    [(properties, _body)] = drain(broker_url, f"{queue}.dead")
    assert properties.headers["x-amqptasks-reason"].startswith("expired")


ROUTED = """\
exchanges:
  {p}.topic: {{type: topic}}
  {p}.fan: {{type: fanout}}
queues:
  {p}.classic:
    bindings: [{{exchange: {p}.topic, routing_key: "orders.*"}}]
  {p}.quorum:
    type: quorum
    bindings: [{{exchange: {p}.fan}}]
  {p}.also:
    bindings: [{{exchange: {p}.fan}}]
"""


def test_delayed_sends_reach_topic_and_fanout_targets_classic_and_quorum(
    tmp_path: Path, broker_url: str, unique: str, cleanup, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    from amqptasks import App

    for suffix in ("classic", "quorum", "also"):
        cleanup.queue(f"{unique}.{suffix}")
    for suffix in ("topic", "fan"):
        cleanup.exchange(f"{unique}.{suffix}")
    path = tmp_path / "routed.yaml"
    path.write_text(ROUTED.format(p=unique))
    app = App("routed", broker=broker_url, topology=str(path))

    @app.task(ignore_result=True)
    def note(tag: str) -> None: ...

    try:
        # The first send provisions (on RabbitMQ 4 with its quorum cascade that can take most of a
        # second): the countdown leaves room for it, and the early check says when it had none.
        countdown = 2.0
        first_sent = time.monotonic()
        note.apply_async(args=("via-topic",), exchange=f"{unique}.topic", routing_key="orders.created", countdown=countdown)
        note.apply_async(args=("via-fanout",), exchange=f"{unique}.fan", routing_key="", countdown=countdown)
        # A destination no topology names: the producer declares its landing queue on first use.
        note.apply_async(args=("ad-hoc",), exchange=f"{unique}.topic", routing_key="orders.paid", countdown=countdown)
        time.sleep(0.2)
        early = [queue_counts(broker_url, f"{unique}.{s}")[0] for s in ("classic", "quorum", "also")]
        checked_after = time.monotonic() - first_sent
        assert checked_after < countdown, f"the sends took {checked_after:.1f}s: too slow to check that none is early"
        assert early == [0, 0, 0]
        assert wait_for(lambda: queue_counts(broker_url, f"{unique}.classic")[0] == 2, 10)
        assert wait_for(lambda: queue_counts(broker_url, f"{unique}.quorum")[0] == 1, 10)
        assert wait_for(lambda: queue_counts(broker_url, f"{unique}.also")[0] == 1, 10)
    finally:
        app.close()
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        connection.channel().queue_delete(landing_queue(f"{unique}.topic", "orders.paid"))
        connection.channel().queue_delete(landing_queue(f"{unique}.topic", "orders.created"))
        connection.channel().queue_delete(landing_queue(f"{unique}.fan", ""))
        connection.close()
    classic = drain(broker_url, f"{unique}.classic")
    assert sorted(body for _p, body in classic) == sorted([b'{"args":["via-topic"],"kwargs":{}}', b'{"args":["ad-hoc"],"kwargs":{}}'])
    assert [p.headers["task"] for p, _b in drain(broker_url, f"{unique}.quorum")] == [note.name]


@pytest.mark.timeout(90)
def test_a_channel_the_broker_closes_under_the_worker_is_replaced(
    workdir: tuple[Path, str], broker_url: str, own_cascade: str, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    """A retry published to a delay exchange that has gone makes the broker close the worker's
    confirm channel (404) while the connection stays up: the worker must start over (reconnect,
    provision the cascade again, take the message back), neither idle nor drop it."""
    directory, queue = workdir
    make_tasks(directory, queue, "dl_chan")
    with running_worker(directory, broker_url, "dl_chan", queue, "--loglevel", "warning") as worker:
        tasks = import_tasks(directory, "dl_chan")
        result = tasks.slow_flaky.delay(2)
        assert wait_for(lambda: "slow 0 False" in done_lines(directory), 10), worker.log
        channel.exchange_delete(entry_exchange(prefix=own_cascade))  # while the task sleeps
        assert result.get(timeout=40) == "done"
        close_app(tasks)
        assert "slow 0 True" in done_lines(directory)  # taken back after the new session began
        assert "connection or channel closed" in worker.log
