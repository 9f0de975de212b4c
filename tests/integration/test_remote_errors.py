"""A real worker's task raises; the caller catches it as it would a local call (issue 15 item 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from amqptasks.errors import TaskError
from tests.integration.test_worker import close_app, import_tasks, workdir  # a fixture
from tests.integration.workerproc import running_worker, write_app

TASKS = """
class PaymentDeclined(Exception):
    def __init__(self, amount, reason):  # needs arguments the caller does not have
        super().__init__(f"{amount} declined: {reason}")

@app.task(queue=QUEUE)
def add(x, y):
    return x + y

@app.task(queue=QUEUE)
def boom(text):
    raise ValueError(text)

@app.task(queue=QUEUE)
def declined():
    raise PaymentDeclined(12, "card expired")
"""


@pytest.mark.timeout(90)
def test_task_exceptions_are_caught_by_their_own_type(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    write_app(directory, "wk_exc", queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, "wk_exc", queue):
        tasks = import_tasks(directory, "wk_exc")
        try:
            try:
                tasks.boom.delay("bad value").get(timeout=10)
            except ValueError as error:  # what a local call would need
                assert str(error) == "bad value" and isinstance(error, TaskError)
                assert error.exc_type == "ValueError" and "raise ValueError(text)" in error.traceback
                assert "wk_exc.boom[" in error.__notes__[0] and "raise ValueError(text)" in error.__notes__[0]
            else:
                pytest.fail("no exception")
            # A class of the tasks module (imported here): caught as itself, its __init__ not run.
            with pytest.raises(tasks.PaymentDeclined) as declined:
                tasks.declined.delay().get(timeout=10)
            assert str(declined.value) == "12 declined: card expired"
            # propagate=False: the exception is returned, not raised.
            result = tasks.boom.delay("returned")
            error = result.get(timeout=10, propagate=False)
            assert isinstance(error, ValueError) and str(error) == "returned"
            assert isinstance(result.result, ValueError)

            async def in_asyncio() -> None:
                sent = await tasks.boom.adelay("async")
                with pytest.raises(ValueError):
                    await sent.aget(timeout=10)
                again = await tasks.boom.adelay("async returned")
                assert isinstance(await again.aget(timeout=10, propagate=False), ValueError)
                await tasks.app.aclose()

            asyncio.run(in_asyncio())
        finally:
            close_app(tasks)

    # Excluded by the app's setting: a TaskError only.
    from amqptasks import App

    write_app(directory, "wk_exc2", queue, f"QUEUE = {queue!r}\n" + TASKS)
    source = (directory / "wk_exc2.py").read_text()
    (directory / "wk_exc2.py").write_text(source.replace("topology=", "not_rebuilt=['ValueError'], topology="))
    with running_worker(directory, broker_url, "wk_exc2", queue):
        tasks = import_tasks(directory, "wk_exc2")
        try:
            assert isinstance(tasks.app, App)
            with pytest.raises(TaskError) as caught:
                tasks.boom.delay("x").get(timeout=10)
            assert type(caught.value) is TaskError
        finally:
            close_app(tasks)


def test_a_send_with_wrong_arguments_names_the_task(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    write_app(directory, "wk_args", queue, f"QUEUE = {queue!r}\n" + TASKS)
    tasks = import_tasks(directory, "wk_args")
    try:
        with pytest.raises(TypeError) as caught:
            tasks.add.delay(3)
        assert str(caught.value) == "wk_args.add(3): missing a required argument: 'y'"
        with pytest.raises(TypeError, match=r"^wk_args\.add\(1, 2, z=3\): got an unexpected keyword argument 'z'$"):
            tasks.add.apply_async((1, 2), {"z": 3})
    finally:
        close_app(tasks)
