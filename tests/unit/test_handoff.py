"""The worker's thread hand-off: results come back to the loop; a raising call never kills a thread."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

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


@pytest.mark.timeout(10)
async def test_calls_that_block_run_side_by_side_even_after_quick_ones() -> None:
    loop = asyncio.get_running_loop()
    for warm_up in (0, 50):  # unknown durations first; then known to be quick, until they block
        barrier = threading.Barrier(6, timeout=5)

        def call(arg: int, barrier: threading.Barrier = barrier) -> int:
            if arg >= 0:
                barrier.wait()  # passes only when all six run at once
            return arg

        threads = ThreadHandoff(loop, call, threads=6, name="t")
        try:
            await asyncio.gather(*(threads.submit(-1) for _ in range(warm_up)))
            assert await asyncio.gather(*(threads.submit(n) for n in range(6))) == list(range(6))
        finally:
            threads.stop()


@pytest.mark.timeout(10)
async def test_quick_work_is_not_held_up_behind_a_call_that_blocks() -> None:
    release = threading.Event()

    def call(arg: str) -> str:
        if arg == "block":
            release.wait(5)
        return arg

    threads = ThreadHandoff(asyncio.get_running_loop(), call, threads=2, name="t")
    try:
        await asyncio.gather(*(threads.submit("quick") for _ in range(20)))
        blocked = threads.submit("block")
        start = time.monotonic()
        assert await asyncio.wait_for(asyncio.gather(*(threads.submit("quick") for _ in range(5))), 2) == ["quick"] * 5
        assert time.monotonic() - start < 0.5 and not blocked.done()
        release.set()
        assert await blocked == "block"
    finally:
        release.set()
        threads.stop()


@pytest.mark.timeout(10)
async def test_work_waiting_at_stop_resolves_to_none_and_never_runs() -> None:
    release = threading.Event()
    ran: list[str] = []

    def call(arg: str) -> str:
        if arg == "block":
            release.wait(5)
        ran.append(arg)
        return arg

    threads = ThreadHandoff(asyncio.get_running_loop(), call, threads=1, name="t")
    try:
        blocked = threads.submit("block")
        await asyncio.sleep(0.05)  # the only thread is in it
        waiting = [threads.submit(f"late{n}") for n in range(3)]
        threads.stop()
        assert await asyncio.gather(*waiting) == [None, None, None]
        release.set()
        assert await blocked == "block"  # the running call still finishes and reports
        assert ran == ["block"]
    finally:
        release.set()
        threads.stop()


@pytest.mark.timeout(10)
async def test_short_calls_that_wait_rather_than_compute_still_overlap() -> None:
    """Half a millisecond of I/O is short but not CPU: serialising such calls on one thread would cost throughput."""
    lock = threading.Lock()
    running = peak = 0

    def call(_arg: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.0005)
        with lock:
            running -= 1

    threads = ThreadHandoff(asyncio.get_running_loop(), call, threads=8, name="t")
    try:
        for _ in range(5):
            await asyncio.gather(*(threads.submit(n) for n in range(8)))
        peak = 0
        await asyncio.gather(*(threads.submit(n) for n in range(40)))
        assert peak >= 4, peak
    finally:
        threads.stop()
