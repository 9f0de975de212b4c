"""The worker against the real broker: results, failures, poison, shutdown, crashes, reconnects."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pika
import pytest

from amqptasks.errors import TaskError
from tests.conftest import Broker
from tests.integration.workerproc import (
    WorkerProcess,
    done_lines,
    drain,
    queue_counts,
    running_worker,
    wait_for,
    write_app,
)


@pytest.fixture
def workdir(tmp_path: Path, unique: str, cleanup) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    """A directory for a generated tasks module, its unique queue, and cleanup of what it declares."""
    queue = unique
    cleanup.queue(queue)
    cleanup.queue(f"{queue}.dead")
    cleanup.exchange(f"{queue}.dlx")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path, queue
    sys.path.remove(str(tmp_path))


def import_tasks(directory: Path, module: str) -> ModuleType:
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    return importlib.import_module(module)


def close_app(module: ModuleType) -> None:
    module.app.close()
    sys.modules.pop(module.__name__, None)


TASKS = """
@app.task(queue=QUEUE)
def add(x, y):
    return x + y

@app.task(queue=QUEUE)
def boom():
    raise ValueError("boom")

@app.task(queue=QUEUE, bind=True)
def nap(self, seconds, tag):
    time.sleep(seconds)
    record(f"{tag} {self.request.id} {self.request.redelivered}")
    return tag

@app.task(queue=QUEUE)
def mark(tag):
    record(str(tag))
"""


def make_tasks(directory: Path, queue: str, module: str) -> Path:
    return write_app(directory, module, queue, f"QUEUE = {queue!r}\n" + TASKS)


def apply_topology(broker_url: str, path: Path) -> None:
    from amqptasks.core.loader import load_topology
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import apply

    apply(Settings(broker_url=broker_url), load_topology(path))


def test_add_round_trip_and_log_lines(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "wk_add")
    with running_worker(directory, broker_url, "wk_add", queue) as worker:
        tasks = import_tasks(directory, "wk_add")
        assert tasks.add.delay(3, 4).get(timeout=10) == 7
        close_app(tasks)
        assert wait_for(lambda: "succeeded in" in worker.log, 5)
    assert worker.exit_code == 0
    log = worker.log
    assert "[tasks]" in log and "wk_add.add" in log
    assert "guest:***@" in log and "guest:guest@" not in log
    assert "Received task: wk_add.add[" in log
    assert "] succeeded in " in log and ": 7" in log


def test_failure_replies_error_and_dead_letters_with_headers(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "wk_boom")
    with running_worker(directory, broker_url, "wk_boom", queue):
        tasks = import_tasks(directory, "wk_boom")
        result = tasks.boom.delay()
        with pytest.raises(TaskError) as caught:
            result.get(timeout=10)
        close_app(tasks)
        assert caught.value.exc_type == "ValueError"
        assert caught.value.exc_message == "boom"
        assert "raise ValueError" in caught.value.traceback
        assert wait_for(lambda: queue_counts(broker_url, f"{queue}.dead")[0] == 1, 5)
    [(properties, body)] = drain(broker_url, f"{queue}.dead")
    headers = properties.headers
    assert headers["x-exception-type"] == "ValueError"
    assert headers["x-exception-message"] == "boom"
    assert "ValueError: boom" in headers["x-traceback"]
    assert headers["x-original-queue"] == queue
    assert headers["id"] == result.id and headers["task"] == "wk_boom.boom"
    assert properties.delivery_mode == 2
    assert orjson.loads(body) == {"args": [], "kwargs": {}}
    assert queue_counts(broker_url, queue)[0] == 0


def _publish_raw(broker_url: str, queue: str, bodies: list[tuple[bytes, dict | None]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, headers in bodies:
            channel.basic_publish(
                "", queue, body, pika.BasicProperties(headers=headers, delivery_mode=2, content_type="application/json"), mandatory=True
            )
    finally:
        connection.close()


def test_poison_is_dead_lettered_and_good_tasks_complete(workdir: tuple[Path, str], broker_url: str) -> None:
    """200 malformed messages interleaved with 1,000 good ones."""
    directory, queue = workdir
    apply_topology(broker_url, make_tasks(directory, queue, "wk_poison"))

    def good_body(n: int) -> bytes:
        return orjson.dumps({"args": [n], "kwargs": {}})

    kinds = [
        (b"{not json", {"task": "wk_poison.mark", "id": "x"}, "not valid JSON"),
        (good_body(1), {"task": "wk_poison.nope", "id": "x"}, "unknown task"),
        (orjson.dumps({"args": [1, 2, 3], "kwargs": {}}), {"task": "wk_poison.mark", "id": "x"}, "arguments do not fit"),
        (good_body(1), None, "missing header"),
        (b"\x00\xff" * 500_000, {"task": "wk_poison.mark", "id": "x"}, "not valid JSON"),
    ]
    messages: list[tuple[bytes, dict | None]] = []
    expected_reasons: list[str] = []
    for n in range(1000):
        messages.append((good_body(n), {"task": "wk_poison.mark", "id": f"good-{n}", "retries": 0}))
        if n % 5 == 0:
            body, headers, reason = kinds[(n // 5) % len(kinds)]
            headers = dict(headers, id=f"bad-{n}") if headers else None
            messages.append((body, headers))
            expected_reasons.append(reason)
    assert len(expected_reasons) == 200
    _publish_raw(broker_url, queue, messages)
    worker = WorkerProcess(directory, broker_url, "-A", "wk_poison", "--queues", queue, "--processes", "1", "--burst", "--loglevel", "warning")
    code = worker.wait(timeout=60)
    assert code == 0, worker.log
    assert sorted(done_lines(directory), key=int) == [str(n) for n in range(1000)]
    dead = drain(broker_url, f"{queue}.dead")
    assert len(dead) == 200
    reasons = sorted(p.headers["x-amqptasks-reason"] for p, _ in dead)
    for expected in set(expected_reasons):
        assert sum(expected in r for r in reasons) == expected_reasons.count(expected), expected
    assert queue_counts(broker_url, queue)[0] == 0


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_lets_running_tasks_finish(workdir: tuple[Path, str], broker_url: str, whole_group: bool) -> None:
    """SIGTERM to the main process, or to the whole group (Ctrl-C, systemd): graceful either way."""
    directory, queue = workdir
    make_tasks(directory, queue, "wk_term")
    worker = WorkerProcess(directory, broker_url, "-A", "wk_term", "--queues", queue, "--processes", "1", "--threads", "20")
    try:
        worker.wait_consuming(queue)
        tasks = import_tasks(directory, "wk_term")
        for n in range(20):
            tasks.nap.apply_async(args=(2, n))
        close_app(tasks)
        assert wait_for(lambda: worker.log.count("Received task") == 20, 10), worker.log
        if whole_group:
            os.killpg(worker.process.pid, signal.SIGTERM)
        else:
            worker.signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    finally:
        worker.stop()
    assert code == 0, worker.log
    lines = done_lines(directory)
    assert len(lines) == 20
    assert all(line.endswith(" False") for line in lines), lines  # none redelivered
    assert queue_counts(broker_url, queue) == (0, 0)


def test_kill_9_redelivers_to_a_second_worker(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "wk_kill")
    tasks = import_tasks(directory, "wk_kill")
    for n in range(100):
        tasks.nap.apply_async(args=(0.5, n))
    close_app(tasks)
    first = WorkerProcess(directory, broker_url, "-A", "wk_kill", "--queues", queue, "--processes", "1", "--threads", "10", "--prefetch", "100")
    try:
        first.wait_consuming(queue)
        assert wait_for(lambda: first.log.count("Received task") >= 10, 10)
        first.kill_group()
        first.wait(timeout=10)
    finally:
        first.stop()
    # The consumer process dies with its parent; its unacked messages return to the queue.
    assert wait_for(lambda: queue_counts(broker_url, queue)[1] == 0, 10)
    second = WorkerProcess(directory, broker_url, "-A", "wk_kill", "--queues", queue, "--processes", "1", "--threads", "20", "--burst")
    assert second.wait(timeout=60) == 0, second.log
    tags = {int(line.split()[0]) for line in done_lines(directory)}
    assert tags == set(range(100))
    assert any(line.endswith(" True") for line in done_lines(directory))  # the redelivered ones say so


def _close_connections(broker: Broker, needle: str) -> int:
    """Close (through the broker under test's management API) the connections named ``needle``."""
    closed = 0
    for connection in broker.api("/api/connections"):
        name = (connection.get("client_properties") or {}).get("connection_name", "")
        if needle in name:
            broker.api(f"/api/connections/{urllib.request.quote(connection['name'], safe='')}", method="DELETE")
            closed += 1
    return closed


@pytest.mark.timeout(120)
def test_worker_resumes_after_its_connections_are_closed(broker: Broker, workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "wk_cut")
    tasks = import_tasks(directory, "wk_cut")
    with tasks.app.batch():
        for n in range(5000):
            tasks.mark.delay(n)
    close_app(tasks)
    with running_worker(directory, broker_url, "wk_cut", queue, "--loglevel", "warning"):
        assert wait_for(lambda: len(done_lines(directory)) >= 500, 20)
        # The management API lists connections from stats refreshed every few seconds.
        assert wait_for(lambda: _close_connections(broker, "amqptasks worker wk_cut") >= 1, 15, interval=0.5)
        cut_at = time.monotonic()
        assert wait_for(lambda: queue_counts(broker_url, queue)[1] == 1, 10)
        resumed_in = time.monotonic() - cut_at
        assert resumed_in < 5, resumed_in
        assert wait_for(lambda: len({line for line in done_lines(directory)}) == 5000, 60)
    assert {int(line) for line in done_lines(directory)} == set(range(5000))


def test_a_crashed_consumer_process_is_restarted(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    make_tasks(directory, queue, "wk_crash")
    with running_worker(directory, broker_url, "wk_crash", queue) as worker:
        children = worker.consumer_pids()
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)
        assert wait_for(lambda: "exited unexpectedly" in worker.log, 10), worker.log
        worker.wait_consuming(queue)
        tasks = import_tasks(directory, "wk_crash")
        assert tasks.add.delay(20, 22).get(timeout=10) == 42
        close_app(tasks)
    assert worker.exit_code == 0


@pytest.mark.timeout(60)
def test_a_replacement_that_cannot_load_the_app_backs_off_until_it_can(workdir: tuple[Path, str], broker_url: str) -> None:
    """Replacements are forked from the small supervisor and import the app themselves."""
    directory, queue = workdir
    module = make_tasks(directory, queue, "wk_broken")
    good = module.read_text()
    with running_worker(directory, broker_url, "wk_broken", queue, "--loglevel", "info") as worker:
        module.write_text("raise RuntimeError('tasks module broken on purpose')\n")
        for cached in directory.glob("__pycache__/wk_broken*"):
            cached.unlink()
        os.kill(worker.consumer_pids()[0], signal.SIGKILL)
        # The first replacement fails to import (exit code 1); the next ones wait longer each time.
        assert wait_for(lambda: "tasks module broken on purpose" in worker.log, 15), worker.log
        assert wait_for(lambda: "(exit code 1); restarting it in 1.0s" in worker.log, 15), worker.log
        assert worker.process.poll() is None, worker.log
        module.write_text(good)
        worker.wait_consuming(queue)
        tasks = import_tasks(directory, "wk_broken")
        assert tasks.add.delay(1, 2).get(timeout=20) == 3
        close_app(tasks)
    assert worker.exit_code == 0


@pytest.mark.timeout(90)
def test_worker_consumes_again_after_the_broker_cancels_its_consumer(
    workdir: tuple[Path, str], broker_url: str, channel: Any
) -> None:
    """Deleting the queue makes RabbitMQ send basic.cancel; the worker must not sit idle afterwards."""
    directory, queue = workdir
    make_tasks(directory, queue, "wk_cancel")
    with running_worker(directory, broker_url, "wk_cancel", queue, "--loglevel", "warning") as worker:
        channel.queue_delete(queue)
        # The worker notices, reconnects, declares the queue again and consumes it.
        assert wait_for(lambda: _consumers(broker_url, queue) == 1, 20), worker.log
        tasks = import_tasks(directory, "wk_cancel")
        tasks.mark.delay(1)
        close_app(tasks)
        assert wait_for(lambda: done_lines(directory) == ["1"], 20), worker.log
        assert "cancelled the consumer" in worker.log


def _consumers(broker_url: str, queue: str) -> int:
    try:
        return queue_counts(broker_url, queue)[1]
    except pika.exceptions.ChannelClosedByBroker:  # 404: the queue does not exist (yet)
        return -1
