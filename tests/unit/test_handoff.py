"""The worker's thread hand-off: results come back to the loop; a raising call never kills a thread."""

from __future__ import annotations

import asyncio
import sys

import pytest

from amqptasks.worker.handoff import ThreadHandoff


def _call(arg: object) -> object:
    if arg == "exit":
        sys.exit(3)
    return arg


@pytest.mark.timeout(10)
async def test_results_return_and_a_raising_call_leaves_the_thread_serving() -> None:
    threads = ThreadHandoff(asyncio.get_running_loop(), _call, threads=1, name="t")
    try:
        with pytest.raises(SystemExit):
            await threads.submit("exit")
        assert await asyncio.gather(*(threads.submit(n) for n in range(50))) == list(range(50))
    finally:
        threads.stop()


@pytest.mark.timeout(10)
async def test_work_submitted_after_stop_resolves_to_none_instead_of_running() -> None:
    ran: list[int] = []
    threads = ThreadHandoff(asyncio.get_running_loop(), ran.append, threads=1, name="t")
    threads.stop()
    assert await threads.submit(1) is None  # after stop: resolved at once, never run
    assert ran == []
