"""Plain-function tasks run on a fixed set of threads; their results return to the event loop in batches.

Both directions are coalesced, because every thread wake-up costs a system call and a GIL hand-over:

* **To the threads**: while recent calls have been quick (a moving average under :data:`QUICK`),
  work submitted during one loop turn wakes *one* idle thread, and a thread that finishes a call
  takes the next waiting one itself: under the GIL, more threads would only take turns. Another thread is woken only while every busy thread has been
  on its current call for longer than ``nudge_after`` (a task that blocks on I/O or sleeps),
  checked at each loop turn that submits and by a timer while work waits. So a burst of quick
  tasks runs on one thread with one wake-up, and a slow one delays the work behind it by at most
  ``nudge_after``. Until calls are known to be quick, or once they are not (a database call of
  half a millisecond probably waits rather than computes), every waiting call gets a thread of
  its own at once.
* **Back to the loop**: finished results are collected under the lock and delivered with one
  ``call_soon_threadsafe`` per burst, instead of ``run_in_executor``'s wake-up per task.

Measured on the drain benchmark (scripts/bench/experiment.py): the return path x1.16 tasks/s on its
own, x1.41 with coalesced acks (results/experiment-worker-fixes.txt); see the README for the
hand-out side.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")

NUDGE_AFTER = 0.001  # seconds a call may run before waiting work wakes another thread
QUICK = 0.00025  # seconds: calls shorter than this on average are run one burst per thread


class ThreadHandoff(Generic[ArgT, ResultT]):
    """``threads`` threads calling ``fn(arg)`` for :meth:`submit` (what it raises goes to the waiter).

    After :meth:`stop`, work not yet started resolves to ``None`` instead of running: a stopping
    worker returns those messages to the queue rather than start them late.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[[ArgT], ResultT], threads: int, name: str,
        nudge_after: float = NUDGE_AFTER,
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._nudge_after = nudge_after
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # All below under the lock.
        self._waiting: collections.deque[tuple[ArgT, asyncio.Future[ResultT | None]]] = collections.deque()
        self._idle = 0  # threads waiting on self._wake
        self._woken = 0  # notified, not yet running (counted so one burst wakes one thread)
        self._since: dict[int, float] = {}  # thread ident -> when its current call started
        self._typical = float("inf")  # recent calls' duration, a moving average; "slow" until known
        self._finished: list[tuple[asyncio.Future[ResultT | None], ResultT | None, BaseException | None]] = []
        self._stopping = False
        self._kick_scheduled = False  # touched on the loop only
        self._timer: asyncio.TimerHandle | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-task-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, arg: ArgT) -> asyncio.Future[ResultT | None]:
        """Queue ``arg`` for a thread; the future resolves to ``fn(arg)``, or ``None`` if stopped first."""
        future: asyncio.Future[ResultT | None] = self._loop.create_future()
        with self._lock:
            if self._stopping:  # no thread would take it any more
                future.set_result(None)
                return future
            self._waiting.append((arg, future))
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)
        return future

    def stop(self) -> None:
        """Start nothing new; threads exit once their current call returns."""
        with self._lock:
            self._stopping = True
            first = not self._finished
            self._finished.extend((future, None, None) for _arg, future in self._waiting)  # never started
            self._waiting.clear()
            self._wake.notify_all()
            deliver = first and bool(self._finished)
        if deliver:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody waits for these
                pass

    def _kick(self) -> None:
        """On the loop, once per turn that submitted: wake threads for waiting work nobody will run soon."""
        self._kick_scheduled = False
        with self._lock:
            if not self._waiting or self._stopping:
                return
            free = self._idle - self._woken
            if free <= 0:
                return  # every thread is busy or about to be: the next one to finish takes the work
            if not self._quick():
                wake = min(free, len(self._waiting))  # calls that may block: one thread each, now
            else:
                now = time.monotonic()
                stuck = all(now - started > self._nudge_after for started in self._since.values())
                wake = 1 if stuck and self._woken == 0 else 0
            self._woken += wake
            self._wake.notify(wake)
            check_again = wake < free and self._quick()
        if check_again and self._timer is None:  # one timer at a time, whoever asked
            self._timer = self._loop.call_later(self._nudge_after, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    def _quick(self) -> bool:
        """Recent calls were so short that one thread runs a burst of them faster than several
        taking turns at the GIL. Longer ones, even of half a millisecond, may wait on I/O: those
        get a thread each. (Their CPU time cannot tell: a call also waits for the GIL.)"""
        return self._typical < QUICK

    def _run(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._idle += 1
                    self._wake.wait()
                    self._idle -= 1
                    self._woken = max(0, self._woken - 1)
                if self._stopping:
                    return
                arg, future = self._waiting.popleft()
                self._since[me] = started = time.monotonic()
            error: BaseException | None = None
            try:
                result = self._fn(arg)
            except BaseException as exc:  # delivered to the waiter; the thread lives on
                result, error = None, exc
            with self._lock:
                del self._since[me]
                self._typical = _average(self._typical, time.monotonic() - started)
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


def _average(previous: float, value: float) -> float:
    return value if previous == float("inf") else 0.8 * previous + 0.2 * value
