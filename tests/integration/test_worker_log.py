"""The worker's log says what happened: a result the caller cannot get is a failure, and a
failure carries its traceback (as ``celery worker -l info`` prints it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from amqptasks.errors import TaskError
from tests.integration.test_worker import close_app, import_tasks, workdir  # a fixture
from tests.integration.workerproc import running_worker, wait_for, write_app

TASKS = """
@app.task(queue=QUEUE)
def a_set():
    return {1, 2}

@app.task(queue=QUEUE)
def boom(text):
    raise ValueError(text)

@app.task(queue=QUEUE, ignore_result=True)
def a_set_nobody_reads():
    return {3}
"""


def _run(directory: Path, broker_url: str, queue: str, module: str, send) -> str:  # type: ignore[no-untyped-def]
    """The worker's log after ``send(tasks)`` and its last line naming ``module``'s ``done`` marker."""
    write_app(directory, module, queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, module, queue) as worker:
        tasks = import_tasks(directory, module)
        try:
            send(tasks)
            tasks.a_set_nobody_reads.delay()  # sent last: its log line means the others are logged
        finally:
            close_app(tasks)
        assert wait_for(lambda: re.search(rf"Task {module}\.a_set_nobody_reads\[[^\]]+\] \w+ in", worker.log), 10), worker.log
    return worker.log


@pytest.mark.timeout(60)
def test_a_result_json_cannot_carry_is_logged_as_a_failure(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir

    def send(tasks) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(TaskError) as caught:
            tasks.a_set.delay().get(timeout=10)
        # The strict JSON rule's error (a TypeError), rebuilt so that `except TypeError` catches it.
        assert caught.value.exc_type.endswith("NotJson") and "set is not JSON" in caught.value.exc_message
        assert isinstance(caught.value, TypeError)

    log = _run(directory, broker_url, queue, "wk_log_set", send)
    a_set = [line for line in log.splitlines() if "wk_log_set.a_set[" in line and "Received" not in line]
    assert a_set and all("succeeded" not in line for line in a_set), a_set
    assert re.search(r"Task wk_log_set\.a_set\[[^\]]+\] failed in [\d.]+s: \S*NotJson: .*set is not JSON", log), log
    # No caller waits for this one: its value is never sent, so nothing failed.
    assert re.search(r"Task wk_log_set\.a_set_nobody_reads\[[^\]]+\] succeeded in", log), log


@pytest.mark.timeout(60)
def test_a_failure_is_logged_with_its_traceback(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir

    def send(tasks) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(TaskError):
            tasks.boom.delay("kaput-42").get(timeout=10)

    log = _run(directory, broker_url, queue, "wk_log_tb", send)
    # The failure line, then its traceback, down to the line that raised.
    failed = re.search(r"Task wk_log_tb\.boom\[[^\]]+\] failed in [\d.]+s: ValueError: kaput-42\n(.*?)ValueError: kaput-42", log, re.DOTALL)
    assert failed, log
    assert failed.group(1).startswith("Traceback (most recent call last):"), failed.group(1)
    assert "raise ValueError(text)" in failed.group(1), failed.group(1)
