"""Publishes on one aiormq confirm channel, written to the socket once per event-loop turn.

``aiormq.Channel.basic_publish`` puts every message on the connection's write queue on its own,
and its writer sends each with its own ``socket.send``: with hundreds of sends in flight that is a
system call, a queue hand-off and a lock per message. Here the messages published during one loop
turn are collected and written as one batch of frames. Measured with 256 confirms in flight and a
minimal message: 1.64x raw aio-pika, against 1.29x for ``basic_publish(wait=False)`` alone.

The confirm of each message is registered exactly as aiormq registers its own (delivery tag ->
future in ``channel.confirmations``, message id -> delivery tag for a ``basic.return``), so
aiormq's reader settles them: ack, nack (``DeliveryError``), return (``PublishError``), and a
closing channel rejects them all. Every publish on the channel must come through one Outbox:
delivery tags are counted in the order messages reach the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.exceptions
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader


class Outbox:
    """Batches the publishes of one loop turn on ``channel`` (an aiormq channel in confirm mode)."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._frames: list[Any] = []
        self._writer: asyncio.Task[None] | None = None

    def publish(self, body: bytes, exchange: str, routing_key: str, properties: spec.Basic.Properties) -> asyncio.Future[Any]:
        """Queue one mandatory publish; the future settles with its confirm (or fails like aiormq's).

        ``properties.message_id`` must be set and unique among messages in flight: a return is
        matched to its message by it.
        """
        channel = self._channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel} is closed")
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation: asyncio.Future[Any] = channel.create_future()
        channel.confirmations[tag] = confirmation
        message_id = properties.message_id
        returns = channel.message_id_delivery_tag
        returns[message_id] = tag
        confirmation.add_done_callback(lambda _: returns.pop(message_id, None))
        frames = self._frames
        frames.append(spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True))
        frames.append(ContentHeader(properties=properties, body_size=len(body)))
        size = channel.max_content_size
        frames.extend(ContentBody(body[i : i + size]) for i in range(0, len(body), size))
        if self._writer is None:
            # Runs after the other callbacks of this loop turn, so their publishes join the batch.
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return confirmation

    async def _write(self) -> None:
        channel = self._channel
        try:
            while self._frames:
                frames, self._frames = self._frames, []
                # The connection's write queue is bounded: wait for room, keep the order.
                await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        finally:
            self._writer = None
