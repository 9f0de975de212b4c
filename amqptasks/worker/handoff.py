"""Plain-function tasks run on a fixed set of threads; their results return to the event loop in batches.

``loop.run_in_executor`` wakes the event loop once per finished task (a self-pipe write and a
callback each). Under load many tasks finish between two loop turns, so here finished results are
collected under a lock and delivered with one ``call_soon_threadsafe`` per burst. Measured on the
drain benchmark: x1.16 tasks/s on its own, x1.41 with coalesced acks
(results/experiment-worker-fixes.txt).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")

_STOP = object()


class ThreadHandoff(Generic[ArgT, ResultT]):
    """``threads`` threads calling ``fn(arg)`` for :meth:`submit` (what it raises goes to the waiter).

    After :meth:`stop`, work not yet started resolves to ``None`` instead of running: a stopping
    worker returns those messages to the queue rather than start them late.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[ArgT], ResultT], threads: int, name: str) -> None:
        self._loop = loop
        self._fn = fn
        self._work: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._finished: list[tuple[asyncio.Future[ResultT | None], ResultT | None, BaseException | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-task-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, arg: ArgT) -> asyncio.Future[ResultT | None]:
        """Queue ``arg`` for a thread; the future resolves to ``fn(arg)``, or ``None`` if stopped first."""
        future: asyncio.Future[ResultT | None] = self._loop.create_future()
        if self._stopping.is_set():  # no thread would take it any more
            future.set_result(None)
        else:
            self._work.put((arg, future))
        return future

    def stop(self) -> None:
        """Start nothing new; threads exit once their current call returns."""
        self._stopping.set()
        for _ in self._threads:
            self._work.put(_STOP)

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            arg, future = item  # type: ignore[misc]
            error: BaseException | None = None
            try:
                result = None if self._stopping.is_set() else self._fn(arg)
            except BaseException as exc:  # delivered to the waiter; the thread lives on
                result, error = None, exc
            with self._lock:
                self._finished.append((future, result, error))
                first = len(self._finished) == 1
            if first:  # the loop has not been woken for this batch yet
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits for this result
                    return

    def _deliver(self) -> None:
        with self._lock:
            batch, self._finished = self._finished, []
        for future, result, error in batch:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
