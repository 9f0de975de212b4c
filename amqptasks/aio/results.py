"""Results for the async producer: the direct reply-to consumer of one aiormq channel.

Replies arrive through the event loop; ``aget()`` awaits a future per task id. Replies for other
results that are still held are kept, so results can be awaited in any order. ``get()`` from
another thread hands the wait to the loop; ``get()`` on the loop's own thread would block the
loop that must deliver the reply, so it refuses with a clear error.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from amqptasks.core.envelope import DIRECT_REPLY_TO, Outcome, decode_result
from amqptasks.errors import AmqpTasksError, ResultTimeout
from amqptasks.result import ResultUnavailable, in_running_loop


class AsyncReplies:
    """What arrived on one async producer channel for results still held (a ResultSource)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = os.getpid()
        self._kept: dict[str, Outcome | None] = {}
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self.broken: str | None = None

    async def start(self, channel: Any) -> None:
        """Consume ``amq.rabbitmq.reply-to`` on ``channel`` (an aiormq channel) before publishing."""
        await channel.basic_consume(DIRECT_REPLY_TO, self._on_message, no_ack=True)

    async def _on_message(self, message: Any) -> None:
        outcome = decode_result(message.body, message.header.properties.correlation_id)
        task_id = outcome.task_id
        if task_id not in self._kept:
            return  # nobody holds that AsyncResult any more
        self._kept[task_id] = outcome
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def expect(self, task_id: str) -> None:
        self._kept.setdefault(task_id, None)

    def fail(self, reason: str) -> None:
        """The connection is gone: no further reply can arrive. Called on the loop."""
        if self.broken is None:
            self.broken = reason
        waiters, self._waiters = self._waiters, {}
        for task_id, waiter in waiters.items():
            if not waiter.done():
                waiter.set_exception(self._unavailable(task_id))
                waiter.exception()  # mark retrieved: a timed-out aget() may have left nobody awaiting it

    def _unavailable(self, task_id: str) -> ResultUnavailable:
        return ResultUnavailable(
            f"the connection that was to receive the result of task {task_id} is gone ({self.broken}); "
            "the task may still run, but results over RPC do not survive a lost connection"
        )

    # --- ResultSource ---------------------------------------------------------------------------

    def poll(self, task_id: str) -> Outcome | None:
        return self._kept.get(task_id)

    async def await_(self, task_id: str, timeout: float | None) -> Outcome:
        outcome = self._kept.get(task_id)
        if outcome is not None:
            return outcome
        if self.pid != os.getpid():
            raise ResultUnavailable(f"the result of task {task_id} belongs to process {self.pid} that sent it")
        current = asyncio.get_running_loop()
        if current is not self.loop:
            if self.loop.is_closed() or not self.loop.is_running():
                raise ResultUnavailable(f"the event loop that sent task {task_id} is no longer running")
            future = asyncio.run_coroutine_threadsafe(self.await_(task_id, timeout), self.loop)
            return await asyncio.wrap_future(future)
        if self.broken is not None:
            raise self._unavailable(task_id)
        waiter = self._waiters.get(task_id)
        if waiter is None or waiter.done():
            waiter = self._waiters[task_id] = self.loop.create_future()
        try:
            # shield: a timed-out aget() must not cancel the future another aget() may await.
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            raise ResultTimeout(f"no result for task {task_id} within {timeout} s; is a worker consuming its queue?") from None

    def wait(self, task_id: str, timeout: float | None) -> Outcome:
        outcome = self._kept.get(task_id)
        if outcome is not None:
            return outcome
        if in_running_loop() is self.loop:
            raise AmqpTasksError(
                f"result.get() would block the event loop that must receive task {task_id}'s result; "
                "use `await result.aget()` in asyncio code"
            )
        if self.loop.is_closed() or not self.loop.is_running():
            raise ResultUnavailable(f"the event loop that sent task {task_id} is no longer running")
        future = asyncio.run_coroutine_threadsafe(self.await_(task_id, timeout), self.loop)
        return future.result()

    def forget(self, task_id: str) -> None:
        self._kept.pop(task_id, None)
        waiter = self._waiters.get(task_id)
        if waiter is not None and waiter.done():
            self._waiters.pop(task_id, None)
