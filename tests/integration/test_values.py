"""Values are refused or round-trip, never silently changed: arguments at send, results in the
worker (strict JSON; tuples arrive as lists, the one documented conversion)."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from amqptasks.errors import TaskError
from tests.integration.test_worker import close_app, import_tasks
from tests.integration.workerproc import queue_counts, running_worker, write_app

TASKS = """
import datetime, math

@app.task(queue=QUEUE)
def echo(*args, **kwargs):
    return {"args": args, "kwargs": kwargs, "types": [type(a).__name__ for a in args]}

@app.task(queue=QUEUE)
def nan():
    return math.nan

@app.task(queue=QUEUE)
def when():
    return {"at": datetime.datetime(2030, 1, 2, tzinfo=datetime.timezone.utc)}

@app.task(queue=QUEUE, autoretry_for=(Exception,), max_retries=3, default_retry_delay=0.05)
def when_counted(path):
    with open(path, "a") as runs:  # one line per run
        runs.write("ran\\n")
    return datetime.date(2030, 1, 2)
"""


@pytest.fixture
def workdir(tmp_path: Path, unique: str, cleanup, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    for name in (unique, f"{unique}.dead"):
        cleanup.queue(name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, unique


def test_values_round_trip_or_are_refused_never_changed(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    write_app(directory, "values_app", queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, "values_app", queue):
        tasks = import_tasks(directory, "values_app")
        try:
            sent = ("ü", 2**63 - 1, -0.5, None, True, [1, [2.5]], {"k": {"n": None}}, (1, 2))
            got = tasks.echo.delay(*sent, key=(3, "x")).get(timeout=20)
            # exactly what was sent; the tuples (and the tuple of args itself) arrive as lists
            assert got["args"] == ["ü", 2**63 - 1, -0.5, None, True, [1, [2.5]], {"k": {"n": None}}, [1, 2]]
            assert got["types"] == ["str", "int", "float", "NoneType", "bool", "list", "dict", "list"]
            assert got["kwargs"] == {"key": [3, "x"]}
            # refused at send, naming the task and the argument's path; nothing is published
            with pytest.raises(TypeError, match=r"echo: args\[0\]: nan is not JSON"):
                tasks.echo.delay(float("nan"))
            with pytest.raises(TypeError, match=r"echo: args\[0\]: inf is not JSON"):
                tasks.echo.delay(float("inf"))
            with pytest.raises(TypeError, match=r"echo: args\[1\]\['when'\]: datetime is not JSON; send .isoformat\(\)"):
                tasks.echo.delay(1, {"when": datetime.datetime.now(datetime.UTC)})
            with pytest.raises(TypeError, match=r"echo: kwargs\['id'\]: UUID is not JSON"):
                tasks.echo.delay(id=uuid.uuid4())
            # results follow the same rule: the caller gets an error naming the task and the path
            with pytest.raises(TaskError) as caught:
                tasks.nan.delay().get(timeout=20)
            assert "values_app.nan: result: nan is not JSON" in str(caught.value)
            with pytest.raises(TaskError) as caught:
                tasks.when.delay().get(timeout=20)
            assert "values_app.when: result['at']: datetime is not JSON" in str(caught.value)
            # a refused result is not a reason to run the task again, whatever autoretry_for says
            runs = directory / "runs.txt"
            with pytest.raises(TaskError, match="date is not JSON"):
                tasks.when_counted.delay(str(runs)).get(timeout=20)
            time.sleep(0.5)  # a retry would have run by now (retry delay 0.05 s)
            assert runs.read_text().count("ran") == 1
        finally:
            close_app(tasks)
    assert queue_counts(broker_url, queue)[0] == 0
