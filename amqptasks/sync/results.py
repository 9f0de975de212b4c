"""Results for the sync producer: the direct reply-to consumer of one producer channel.

A reply arrives on the channel that published its task (that is how direct reply-to works), so
``get()`` pumps that channel's connection — from whatever thread calls it, holding the producer's
lock because pika's BlockingConnection is not thread-safe. Replies for other results that are
still held arrive in the same pump and are kept, so results can be read in any order.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from amqptasks.core.envelope import DIRECT_REPLY_TO, Outcome, decode_result
from amqptasks.errors import ResultTimeout
from amqptasks.result import ResultUnavailable

if TYPE_CHECKING:
    from amqptasks.sync.publisher import Producer

PUMP_SLICE = 0.25  # seconds a get() holds the connection before letting a publisher in


class Replies:
    """What arrived on one producer channel for results someone still holds (a ResultSource)."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        # task id -> outcome (None: expected, not arrived). Plain dict operations are atomic under
        # the GIL, which is all the cross-thread sharing here needs.
        self._kept: dict[str, Outcome | None] = {}
        self.consumer_tag: str | None = None

    def start(self) -> None:
        """Consume ``amq.rabbitmq.reply-to`` (before the first publish, as the broker requires)."""
        started = self._producer.signal()
        impl = self._producer.channel_impl
        impl.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True, callback=started)  # no-ack: required
        self._producer.pump(started.is_set, time.monotonic() + self._producer.settings.confirm_timeout)
        if not started.is_set():
            raise ResultUnavailable("the broker did not confirm the reply consumer in time")

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        outcome = decode_result(body, properties.correlation_id)
        if outcome.task_id in self._kept:
            self._kept[outcome.task_id] = outcome
            self._producer.wake()
        # else: nobody holds that AsyncResult any more (or it was read already): drop it.

    def expect(self, task_id: str) -> None:
        """A task wanting a result is about to be published on this channel."""
        self._kept.setdefault(task_id, None)

    # --- ResultSource ---------------------------------------------------------------------------

    def poll(self, task_id: str) -> Outcome | None:
        outcome = self._kept.get(task_id)
        if outcome is None and self._producer.usable_here():
            self._producer.try_pump_once()
            outcome = self._kept.get(task_id)
        return outcome

    def wait(self, task_id: str, timeout: float | None) -> Outcome:
        producer = self._producer
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            outcome = self._kept.get(task_id)
            if outcome is not None:
                return outcome
            if producer.pid != os.getpid():
                raise ResultUnavailable(
                    f"the result of task {task_id} belongs to process {producer.pid} that sent it; "
                    "read results in the process that sent the tasks"
                )
            if producer.broken is not None:
                raise ResultUnavailable(
                    f"the connection that was to receive the result of task {task_id} is gone "
                    f"({producer.broken}); the task may still run, but results over RPC do not survive "
                    "a lost connection"
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ResultTimeout(f"no result for task {task_id} within {timeout} s; is a worker consuming its queue?")
            slice_end = now + PUMP_SLICE if deadline is None else min(deadline, now + PUMP_SLICE)
            producer.pump_for(lambda: self._kept.get(task_id) is not None, slice_end)

    async def await_(self, task_id: str, timeout: float | None) -> Outcome:
        outcome = self._kept.get(task_id)
        if outcome is not None:
            return outcome
        # The sync connection is pumped by blocking calls: do that off the event loop.
        return await asyncio.to_thread(self.wait, task_id, timeout)

    def forget(self, task_id: str) -> None:
        self._kept.pop(task_id, None)

    @property
    def held(self) -> int:
        """How many results this channel is keeping or expecting (for tests and stats)."""
        return len(self._kept)
