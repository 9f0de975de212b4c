"""Which plain-function tasks run on the event loop itself instead of a thread.

Only tasks declared with ``@app.task(inline=True)`` are ever considered: by default a plain ``def``
task always runs on a thread, where no event loop runs, so ``asyncio.run()``, Django's ORM and any
other code that refuses a running loop behaves as in a plain call. The policy below, its demotion
and its watchdog, concern opted-in tasks only.

Handing a call to a thread and its result back costs two thread wake-ups. On the benchmark machine
(2 cores shared with the broker) that is 150-300 µs of latency per task, measured — far longer
than a task like ``add(x, y)`` runs. So a plain function that has proven *instant* on a thread
(:data:`PROMOTE_AFTER` calls in a row, each under :data:`INSTANT`) runs on the loop from then on.
What keeps that safe:

* A loop call of :data:`BLOCKING` or more, or a second one of :data:`DEMOTE_AFTER` or more within
  :data:`STRIKE_WINDOW` calls, sends its task back to threads for good, in this process (logged):
  a task that blocks the loop is not trusted with it again. One short slow call alone is
  forgiven: on a busy machine the process is sometimes preempted in the middle of an instant
  call, and one such pause used to send an instant task to threads for good (seen when
  profiling the RPC benchmark under py-spy).
* A redelivered message always runs on a thread: it may be the one that stalled or killed a worker.
* :class:`LoopWatchdog`: a loop call still running after :data:`HANG_LIMIT` ends the process
  (its supervisor starts another; its unacked messages return to the queue), rather than leave a
  worker connected but never consuming again.
* ``amqptasks worker --no-inline`` keeps every plain function on threads, opted in or not: a kill
  switch for a deployment that finds an opted-in task misbehaving.

An opted-in task still starts on threads and moves to the loop only once proven instant, rather
than from its first call: ``inline=True`` is a promise made by whoever wrote the decorator, and the
measurement catches a task that breaks it (a network call, a lock) before it ever blocks the loop,
at the cost of 32 calls on threads, nothing in a drain of thousands.

:class:`InlinePolicy` is the decision alone (no I/O, no clock): the consumer measures and reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("amqptasks.worker")

INSTANT = 0.0001  # seconds: a call under this, on a thread, counts towards running on the loop
PROMOTE_AFTER = 32  # instant calls in a row on threads before a task runs on the loop
DEMOTE_AFTER = 0.001  # seconds: a loop call this long is slow; two close together send the task back
STRIKE_WINDOW = 32  # loop calls of a task within which a second slow one sends it back to threads
BLOCKING = 0.01  # seconds: a loop call this long sends its task back at once (no preemption is that long)
HANG_LIMIT = 30.0  # seconds one loop call may block before the process exits


class InlinePolicy:
    """Per task name: run on a thread (the default) or on the loop (after proving instant).

    The caller reports calls of opted-in tasks only (``@app.task(inline=True)``): a task it never
    reports never runs on the loop."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._streak: dict[str, int] = {}  # task -> instant calls in a row on threads
        self._inline: set[str] = set()
        self._demoted: set[str] = set()
        self._calls: dict[str, int] = {}  # task -> calls on the loop so far
        self._slow_at: dict[str, int] = {}  # task -> which of those calls was last slow

    @property
    def has_inline(self) -> bool:
        """Whether any task runs on the loop yet."""
        return bool(self._inline)

    def runs_inline(self, task: str, redelivered: bool) -> bool:
        """Run this delivery of ``task`` on the loop?"""
        return task in self._inline and not redelivered

    def ran_on_thread(self, task: str, seconds: float) -> None:
        """A call of ``task`` took ``seconds`` on a thread."""
        if not self.enabled or task in self._demoted or task in self._inline:
            return
        streak = self._streak.get(task, 0) + 1 if seconds < INSTANT else 0
        if streak >= PROMOTE_AFTER:
            self._streak.pop(task, None)
            self._inline.add(task)
        else:
            self._streak[task] = streak

    def ran_inline(self, task: str, seconds: float) -> bool:
        """A call of ``task`` took ``seconds`` on the loop; True if that sent it back to threads."""
        call = self._calls[task] = self._calls.get(task, 0) + 1
        if seconds < DEMOTE_AFTER:
            return False
        last_slow = self._slow_at.get(task)
        self._slow_at[task] = call
        if seconds < BLOCKING and (last_slow is None or call - last_slow > STRIKE_WINDOW):
            return False
        self._inline.discard(task)
        self._demoted.add(task)
        return True


def exit_process(what: str, seconds: float) -> None:
    """The watchdog's verdict: say why, then end this process at once (no clean-up can run on a
    blocked loop; the supervisor replaces the process and the broker requeues its messages)."""
    log.critical(
        "%s has blocked the event loop for %.0f s; exiting so that a new process takes over "
        "(its unacked messages return to the queue). Remove inline=True from the task, or run the "
        "worker with --no-inline.",
        what,
        seconds,
    )
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os._exit(1)


class LoopWatchdog:
    """Watches the loop calls made between :meth:`enter` and :meth:`leave` from a daemon thread,
    started with the first call; one running past ``limit`` seconds gets ``on_hang(what, seconds)``."""

    def __init__(self, limit: float = HANG_LIMIT, on_hang: Callable[[str, float], None] = exit_process) -> None:
        self._limit = limit
        self._on_hang = on_hang
        self._current: tuple[float, str] | None = None  # replaced whole: the thread reads it in one go
        self._thread: threading.Thread | None = None

    def enter(self, what: str) -> None:
        """A loop call of ``what`` starts (on the loop thread)."""
        self._current = (time.monotonic(), what)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="amqptasks-loop-watchdog", daemon=True)
            self._thread.start()

    def leave(self) -> None:
        self._current = None

    def _watch(self) -> None:
        reported: tuple[float, str] | None = None
        while True:
            time.sleep(min(1.0, self._limit / 4))
            current = self._current
            if current is None or current is reported:
                continue
            since, what = current
            running = time.monotonic() - since
            if running >= self._limit:
                reported = current
                self._on_hang(what, running)
