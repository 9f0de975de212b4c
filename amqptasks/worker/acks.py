"""Sending a consuming channel's acks: coalesced once per loop turn (see core/acks.py for which),
written to the socket at once when nothing is ahead of them (aio/tap.py), else through aiormq.

Every delivery finished in a loop turn is acked at the end of that turn: the contiguous prefix
with one multiple ack, deliveries above a still-running one singly. An ack held back is a prefetch
slot the broker cannot refill: with as many threads as prefetch (I/O-bound tasks), the slot's
thread waits idle for it. Holding acks above a gap until it closed (at most half the prefetch, at
most 50 ms) saved a few frames, and cost the I/O-bound benchmark x1.27-1.40 tasks/s and the no-op
drain x1.23 (scripts/bench/experiment.py, one run each; the README's Performance section).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from amqptasks.core.acks import AckBatch, AckWindow
from amqptasks.core.frames import encode_ack

log = logging.getLogger("amqptasks.worker")


class AckSender:
    """The acks of one consuming channel. Delivery tags restart on a new channel: make a new one."""

    def __init__(
        self, channel: Any, recoverable: tuple[type[BaseException], ...], write: Callable[[bytes], bool] | None = None
    ) -> None:
        """``write``: sends frames now if nothing is queued before them, else returns False
        (:meth:`amqptasks.aio.tap.DeliveryTap.write`); without it, every ack goes through aiormq."""
        self.channel = channel
        self._write = write
        self._window = AckWindow(hold=1)  # nothing finished waits for a gap below it to close
        self._recoverable = recoverable
        self._scheduled = False
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
        self._flush(force=True)
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout)

    def _flush(self, force: bool = False) -> None:
        self._scheduled = False
        batch = self._window.take(force=force)
        if batch and not self._write_now(batch):
            send = asyncio.ensure_future(self._send(batch))
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)

    def _write_now(self, batch: AckBatch) -> bool:
        """Written behind everything already queued; False if it has to wait its turn."""
        if self._write is None or self._sends or self.channel.is_closed:  # a batch still queueing goes first
            return False
        number = self.channel.number
        return self._write(b"".join(encode_ack(number, tag, multiple) for tag, multiple in _frames(batch)))

    async def _send(self, batch: AckBatch) -> None:
        frames = _frames(batch)
        try:
            # aiormq's write queue is bounded, so queueing a batch can suspend midway (hence the
            # lock). No waiting for the socket inside it: on a dead connection that never ends.
            async with self._order:
                for tag, multiple in frames:
                    await self.channel.basic_ack(tag, multiple=multiple, wait=False)
        except self._recoverable as exc:
            log.warning("acks lost (%s); those messages will be redelivered", f"{type(exc).__name__}: {exc}"[:200])


def _frames(batch: AckBatch) -> list[tuple[int, bool]]:
    """(delivery tag, multiple) of each ack frame, in the order they must go."""
    return ([(batch.upto, True)] if batch.upto is not None else []) + [(tag, False) for tag in batch.singles]
