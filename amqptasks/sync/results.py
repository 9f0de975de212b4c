"""One pika connection shared by the thread that publishes and the threads that wait for replies.

A reply arrives on the channel that published its task (that is how direct reply-to works), so
``get()`` pumps that channel's connection — from whatever thread calls it, holding the
connection's lock because pika's BlockingConnection is not thread-safe. A publisher that wants the
connection meanwhile wakes the pumping thread (``add_callback_threadsafe``, the one thread-safe
pika call) and gets it within one I/O turn. Replies for other results that are still held arrive
in the same pump and are kept, so results can be read in any order.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.exceptions

from amqptasks.core.envelope import DIRECT_REPLY_TO, Outcome, decode_result
from amqptasks.errors import ResultTimeout
from amqptasks.result import ResultUnavailable
from amqptasks.settings import Settings
from amqptasks.sync._pika_internals import call_later, flush_output, remove_timeout
from amqptasks.sync.direct import DirectSocket

PUMP_SLICE = 0.25  # seconds a get() holds the connection before checking whether to let go
LOOP_TURN_EVERY = 1.0  # seconds the direct reads (sync/direct.py) may go without a turn of pika's loop
IO_ERRORS = (pika.exceptions.AMQPError, OSError, ValueError)


class Broken(Exception):
    """The connection can no longer be used. ``retryable``: it was lost (reconnect and resend)."""

    def __init__(self, cause: BaseException | str, retryable: bool) -> None:
        self.cause = cause
        self.retryable = retryable
        self.flight: Any = None  # the publish under way when it broke, if any
        super().__init__(str(cause) or type(cause).__name__)


class SharedConnection:
    """A BlockingConnection used by one thread at a time, handed over on request."""

    def __init__(self, settings: Settings, connection: pika.BlockingConnection) -> None:
        self.settings = settings
        self.connection = connection
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.broken: Broken | None = None
        self.last_used = time.monotonic()
        self._wanted = 0  # publishers waiting for the lock while a get() pumps
        self._wanted_lock = threading.Lock()
        self.direct: DirectSocket | None = None  # set by a Producer: reads that skip pika's loop
        self._loop_turn = time.monotonic()  # when pump last ran pika's own loop

    @staticmethod
    def signal() -> _Flag:
        """A callback for a pika RPC reply (or timer) that records that it came."""
        return _Flag()

    def _break(self, cause: BaseException | str, retryable: bool) -> Broken:
        if self.broken is None:
            self.broken = Broken(cause, retryable)
        return self.broken

    def usable_here(self) -> bool:
        return self.broken is None and self.pid == os.getpid()

    def pump(self, until: Callable[[], bool], deadline: float) -> bool:
        """Process I/O until ``until()`` or ``deadline``; the caller holds the lock. Raises Broken.

        Reads directly off the socket first where it can (``sync/direct.py``); then drives
        pika's loop with ``_flush_output`` and our own waiters rather than
        ``process_data_events``: our callbacks run at the channel-impl level, invisible to
        process_data_events' own stop conditions, and its per-call bookkeeping was a measurable
        share of a single send's CPU (scripts/bench_publish.py).
        """
        if until():
            return True
        if self.broken is not None:
            raise self.broken
        # pika's timers (heartbeats) run only in its loop: take a turn of it at least every second.
        if self.direct is not None and self.direct.active and time.monotonic() - self._loop_turn < LOOP_TURN_EVERY:
            try:
                self.direct.wait(lambda: until() or self.broken is not None, min(deadline, self._loop_turn + LOOP_TURN_EVERY))
            except IO_ERRORS as exc:
                raise self._break(exc, retryable=True) from None
            if until():
                return True
            if self.broken is not None:
                raise self.broken
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        expired = _Flag()
        timer = call_later(self.connection, remaining, expired)
        self._loop_turn = time.monotonic()
        try:
            flush_output(self.connection, expired.is_set, until, self._is_broken)
        except IO_ERRORS as exc:
            raise self._break(exc, retryable=True) from None
        finally:
            if not expired.is_set():
                remove_timeout(self.connection, timer)
        if self.broken is not None:
            raise self.broken
        return until()

    def _is_broken(self) -> bool:
        return self.broken is not None

    def try_pump_once(self) -> None:
        """Read what is waiting, if nobody else is using the connection. Never blocks, never raises."""
        if self.broken is not None or self.pid != os.getpid() or not self.lock.acquire(blocking=False):
            return
        try:
            self.connection.process_data_events(time_limit=0)
        except IO_ERRORS as exc:
            self._break(exc, retryable=True)
        finally:
            self.lock.release()

    def pump_for(self, until: Callable[[], bool], slice_end: float) -> None:
        """Pump from any thread (a get()) for at most one slice, yielding to waiting publishers."""
        if not self.lock.acquire(timeout=max(0.0, slice_end - time.monotonic())):
            return
        try:
            if self.broken is None and not until():
                self.pump(lambda: until() or self._wanted > 0, slice_end)
        except Broken:
            pass  # recorded in self.broken; the caller reports it
        finally:
            self.lock.release()
        if self._wanted:
            time.sleep(0.001)  # let the publisher that woke us take the connection first

    def acquire(self) -> None:
        """Exclusive use for a publish (release with :meth:`release`); a get() pumping meanwhile
        is woken to hand over."""
        if self.lock.acquire(blocking=False):
            return
        with self._wanted_lock:
            self._wanted += 1
        try:
            try:
                self.connection.add_callback_threadsafe(_nothing)
            except IO_ERRORS:
                pass
            self.lock.acquire()
        finally:
            with self._wanted_lock:
                self._wanted -= 1

    def release(self) -> None:
        self.last_used = time.monotonic()
        self.lock.release()


class _Flag:
    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def __call__(self, *_args: Any) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def _nothing() -> None:
    """Scheduled with add_callback_threadsafe only to wake the connection's I/O loop."""


class Replies:
    """What arrived on one producer channel for results someone still holds (a ResultSource)."""

    def __init__(self, shared: SharedConnection) -> None:
        self._shared = shared
        # task id -> outcome (None: expected, not arrived). Plain dict operations are atomic under
        # the GIL, which is all the cross-thread sharing here needs.
        self._kept: dict[str, Outcome | None] = {}

    def start(self, channel_impl: Any) -> None:
        """Consume ``amq.rabbitmq.reply-to`` (before the first publish, as the broker requires)."""
        started = self._shared.signal()
        tag = channel_impl.basic_consume(DIRECT_REPLY_TO, self._on_pika_reply, auto_ack=True, callback=started)  # no-ack: required
        if not self._shared.pump(started.is_set, time.monotonic() + self._shared.settings.confirm_timeout):
            raise ResultUnavailable("the broker did not confirm the reply consumer in time")
        if self._shared.direct is not None:
            self._shared.direct.take_replies(tag, self.on_reply)  # read off the socket (sync/direct.py)

    def _on_pika_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        self.on_reply(properties.correlation_id, body)

    def on_reply(self, correlation_id: str | None, body: bytes) -> None:
        """A reply arrived: kept if its result is still held."""
        outcome = decode_result(body, correlation_id)
        if outcome.task_id in self._kept:
            self._kept[outcome.task_id] = outcome
        # else: nobody holds that AsyncResult any more (or it was read already): drop it.

    def expect(self, task_id: str) -> None:
        """A task wanting a result is about to be published on this channel."""
        self._kept.setdefault(task_id, None)

    @property
    def held(self) -> int:
        """How many results this channel is keeping or expecting (for tests and stats)."""
        return len(self._kept)

    # --- ResultSource ---------------------------------------------------------------------------

    def poll(self, task_id: str) -> Outcome | None:
        outcome = self._kept.get(task_id)
        if outcome is None and self._shared.usable_here():
            self._shared.try_pump_once()
            outcome = self._kept.get(task_id)
        return outcome

    def wait(self, task_id: str, timeout: float | None) -> Outcome:
        shared = self._shared
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            outcome = self._kept.get(task_id)
            if outcome is not None:
                return outcome
            if shared.pid != os.getpid():
                raise ResultUnavailable(
                    f"the result of task {task_id} belongs to process {shared.pid} that sent it; "
                    "read results in the process that sent the tasks"
                )
            if shared.broken is not None:
                raise ResultUnavailable(
                    f"the connection that was to receive the result of task {task_id} is gone "
                    f"({shared.broken}); the task may still run, but results over RPC do not survive "
                    "a lost connection"
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ResultTimeout(f"no result for task {task_id} within {timeout} s; is a worker consuming its queue?")
            slice_end = now + PUMP_SLICE if deadline is None else min(deadline, now + PUMP_SLICE)
            shared.pump_for(lambda: self._kept.get(task_id) is not None, slice_end)

    async def await_(self, task_id: str, timeout: float | None) -> Outcome:
        outcome = self._kept.get(task_id)
        if outcome is not None:
            return outcome
        # The sync connection is pumped by blocking calls: do that off the event loop.
        return await asyncio.to_thread(self.wait, task_id, timeout)

    def forget(self, task_id: str) -> None:
        self._kept.pop(task_id, None)
