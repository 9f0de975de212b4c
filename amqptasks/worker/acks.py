"""Sending a consuming channel's acks: coalesced once per loop turn (see core/acks.py for which)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqptasks.core.acks import AckBatch, AckWindow

log = logging.getLogger("amqptasks.worker")

#: How long finished deliveries above a still-running one wait before they are acked singly.
HOLD_SECONDS = 0.05


class AckSender:
    """The acks of one consuming channel. Delivery tags restart on a new channel: make a new one."""

    def __init__(self, channel: Any, hold: int, recoverable: tuple[type[BaseException], ...]) -> None:
        self.channel = channel
        self._window = AckWindow(hold=hold)
        self._recoverable = recoverable
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # One batch at a time, in order (the lock is FIFO): a multiple ack from a later batch must
        # not overtake a single ack it covers, or the broker sees that tag twice and closes the channel.
        self._order = asyncio.Lock()

    def ack(self, tag: int) -> None:
        """``tag`` finished: its ack goes out with the others finished in this loop turn."""
        self._window.settle(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def settled_on_wire(self, tag: int) -> None:
        """``tag`` was already settled another way (rejected): it no longer holds back the others."""
        self._window.settle(tag, acked=True)

    async def flush_now(self, timeout: float) -> None:
        """Before closing on purpose: every finished delivery's ack queued for writing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush(force=True)
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout)

    def _flush(self, force: bool = False) -> None:
        self._scheduled = False
        batch = self._window.take(force=force)
        if batch:
            send = asyncio.ensure_future(self._send(batch))
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)
        if self._window.waiting and self._timer is None:
            # Finished deliveries above a still-running one: ack them soon even if it runs on.
            self._timer = asyncio.get_running_loop().call_later(HOLD_SECONDS, self._flush_held)

    def _flush_held(self) -> None:
        self._timer = None
        self._flush(force=True)

    async def _send(self, batch: AckBatch) -> None:
        frames = [(batch.upto, True)] if batch.upto is not None else []
        frames += [(tag, False) for tag in batch.singles]
        try:
            # aiormq's write queue is bounded, so queueing a batch can suspend midway (hence the
            # lock). No waiting for the socket inside it: on a dead connection that never ends.
            async with self._order:
                for tag, multiple in frames:
                    await self.channel.basic_ack(tag, multiple=multiple, wait=False)
        except self._recoverable as exc:
            log.warning("acks lost (%s); those messages will be redelivered", f"{type(exc).__name__}: {exc}"[:200])
