"""Plain-function tasks on the event loop (worker/inline.py), seen from a real worker: where each call ran.

Only ``@app.task(inline=True)`` tasks may ever run on the loop; a plain ``def`` task by default never
sees a running event loop, on its 1st call or its 1000th."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from amqptasks import fastpaths
from amqptasks.worker.inline import PROMOTE_AFTER
from tests.integration.test_worker import close_app, import_tasks, workdir  # a fixture
from tests.integration.workerproc import running_worker, wait_for, write_app

TASKS = """
import asyncio
import threading

@app.task(queue=QUEUE, inline=True)
def where(seconds):
    if seconds:
        time.sleep(seconds)
    return threading.current_thread().name

@app.task(queue=QUEUE, inline=True)
def context():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "thread"
    return "task" if asyncio.current_task() is not None else "socket"

@app.task(queue=QUEUE)
def plain():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "no loop"
    return "running loop"

async def _three():
    return 3

@app.task(queue=QUEUE)
def runs_asyncio():
    return asyncio.run(_three())
"""

CALLS = PROMOTE_AFTER + 10


def on_a_thread(name: str) -> bool:
    return "-task-" in name  # the hand-off's threads: Worker-N-task-I


@pytest.mark.timeout(60)
def test_an_instant_task_moves_to_the_loop_and_back_to_threads_once_it_blocks(
    workdir: tuple[Path, str], broker_url: str
) -> None:
    directory, queue = workdir
    write_app(directory, "wk_inline", queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, "wk_inline", queue) as worker:
        tasks = import_tasks(directory, "wk_inline")
        try:
            # Promotion takes PROMOTE_AFTER instant calls in a row; on a busy machine a slow one
            # restarts the count, so call until the loop thread answers (or give up).
            def until_on_the_loop(task: Any, *args: Any, on_loop: str) -> list[str]:
                seen = [task.delay(*args).get(timeout=10)]
                while seen[-1] != on_loop and len(seen) < 20 * CALLS:
                    seen.append(task.delay(*args).get(timeout=10))
                return seen

            names = until_on_the_loop(tasks.where, 0, on_loop="MainThread")
            assert all(on_a_thread(name) for name in names[:PROMOTE_AFTER]), names[:PROMOTE_AFTER]
            assert len(names) > PROMOTE_AFTER and names[-1] == "MainThread", names[-5:]  # the consumer's loop thread
            # On the loop, straight from the socket (aio/tap.py): inside no asyncio task at all;
            # with AMQPTASKS_FAST_PATHS=0 (no tap), in aiormq's task for the delivery.
            on_loop = "socket" if fastpaths.enabled() else "task"
            contexts = until_on_the_loop(tasks.context, on_loop=on_loop)
            assert contexts[0] == "thread" and contexts[-1] == on_loop, contexts[-5:]
            assert tasks.context.delay().get(timeout=10) == on_loop
            # Blocking the loop (2 ms: slow, not long): it ran there; by the second such call at
            # the latest (one may be forgiven) the task is back on threads, for every later call.
            assert tasks.where.delay(0.002).get(timeout=10) == "MainThread"
            tasks.where.delay(0.002).get(timeout=10)
            after = [tasks.where.delay(0).get(timeout=10) for _ in range(CALLS)]
            assert all(on_a_thread(name) for name in after), after
        finally:
            close_app(tasks)
        assert wait_for(lambda: "on the event loop; it runs on a thread from now on" in worker.log, 5), worker.log
        assert re.search(r"Task wk_inline\.where took \d+\.\d ms on the event loop", worker.log), worker.log
    assert worker.exit_code == 0


@pytest.mark.timeout(60)
def test_no_inline_keeps_every_call_on_a_thread(workdir: tuple[Path, str], broker_url: str) -> None:
    directory, queue = workdir
    write_app(directory, "wk_no_inline", queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, "wk_no_inline", queue, "--no-inline"):
        tasks = import_tasks(directory, "wk_no_inline")
        try:
            names = [tasks.where.delay(0).get(timeout=10) for _ in range(CALLS)]
        finally:
            close_app(tasks)
    assert all(on_a_thread(name) for name in names), names


@pytest.mark.timeout(120)
def test_a_plain_task_never_sees_a_running_loop_by_default(workdir: tuple[Path, str], broker_url: str) -> None:
    """Many instant calls in a row (old code moved such a task onto the loop after 32 of them)."""
    directory, queue = workdir
    write_app(directory, "wk_plain", queue, f"QUEUE = {queue!r}\n" + TASKS)
    with running_worker(directory, broker_url, "wk_plain", queue):
        tasks = import_tasks(directory, "wk_plain")
        try:
            seen: list[str] = []
            for _ in range(2):  # a burst of 200, then another: instant calls back to back on the worker
                seen += [r.get(timeout=30) for r in tasks.app.send_many([tasks.plain.s() for _ in range(200)])]
            seen += [tasks.plain.delay().get(timeout=10) for _ in range(CALLS)]  # one at a time, too
            ran = [r.get(timeout=30) for r in tasks.app.send_many([tasks.runs_asyncio.s() for _ in range(200)])]
            ran += [tasks.runs_asyncio.delay().get(timeout=10) for _ in range(CALLS)]
        finally:
            close_app(tasks)
    assert seen.count("running loop") == 0, f"{seen.count('running loop')} of {len(seen)} calls ran on the event loop"
    assert ran == [3] * len(ran)


def test_inline_is_refused_for_an_async_task_and_must_be_a_bool() -> None:
    from amqptasks import App
    from amqptasks.errors import ConfigurationError

    app = App("t_inline_opt")
    with pytest.raises(ConfigurationError, match="inline=True is for plain"):

        @app.task(inline=True)
        async def nope() -> None: ...

    with pytest.raises(ConfigurationError, match="inline must be True or False"):

        @app.task(inline="yes")
        def nope2() -> None: ...
