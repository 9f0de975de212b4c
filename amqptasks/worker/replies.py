"""Replies to callers (RPC results) go out on a connection of their own.

A reply is published to whatever ``reply_to`` the *sender* wrote. RabbitMQ 3.10 answers a malformed
direct reply-to address (``amq.rabbitmq.reply-to.<garbage>``) by closing the connection with
541 INTERNAL_ERROR. On the consuming connection that would requeue every unacked delivery, and the
bad message would come back and do it again: one message anyone can send would become a loop of
re-runs (found by tests/faults/test_poison.py). On this connection a bad address costs only that
reply; the connection is opened again for the next one.

A reply's frames are encoded by core/frames.py and written to the socket at once (aio/tap.py),
behind anything aiormq has queued: an RPC caller waits for exactly this write, and aiormq's
``basic_publish`` (pamqp objects, a lock, a marshal per frame, a hop to its writer task) was a
third of the worker's own time per round trip. With ``AMQPTASKS_FAST_PATHS=0`` the connection has
no tap and replies go through ``basic_publish``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from aiormq.abc import ChannelFrame

from amqptasks.aio.connection import aconnect
from amqptasks.aio.outbox import pamqp_properties
from amqptasks.core.frames import FRAME_OVERHEAD, encode_publish

if TYPE_CHECKING:
    from amqptasks.core.envelope import Properties
    from amqptasks.settings import Settings

log = logging.getLogger("amqptasks.worker")


class ReplyPublisher:
    """Publishes replies on a lazily opened connection; a failed reply is logged, never raised."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._connection: Any = None
        self._channel: Any = None
        self._tap: Any = None  # the connection's DeliveryTap (aio/tap.py): writes without a hop
        self._opening = asyncio.Lock()

    def publish_now(self, reply_to: str, body: bytes, properties: Properties, task_id: str) -> bool:
        """Send one reply if that needs no waiting: True once it is written or queued (or lost,
        logged); False if it needs :meth:`publish` (no connection yet, or aiormq's queue is full)."""
        channel = self._channel
        if channel is None or channel.is_closed or self._tap is None:
            return False
        try:
            frames = self._frames(channel, reply_to, body, properties)
        except ValueError as exc:
            self._lost(task_id, reply_to, exc)
            return True
        # Written now, behind whatever aiormq has queued on this connection (aio/tap.py).
        return bool(self._tap.write(frames))

    async def publish(self, reply_to: str, body: bytes, properties: Properties, task_id: str) -> None:
        """Send one reply; on any failure log it (naming the task) and drop the connection it used."""
        if self.publish_now(reply_to, body, properties, task_id):
            return
        used: Any = None
        try:
            # Bounded: a publish on a connection the broker just closed can otherwise wait forever.
            async with asyncio.timeout(self._settings.confirm_timeout):
                used, channel = await self._open()
                if self._tap is None:  # AMQPTASKS_FAST_PATHS=0: aiormq's own publish, nothing else
                    if len(reply_to.encode()) > 255:
                        raise ValueError("reply_to is longer than 255 bytes")
                    await channel.basic_publish(
                        body, exchange="", routing_key=reply_to, properties=pamqp_properties(properties), mandatory=False
                    )
                    return
                frames = self._frames(channel, reply_to, body, properties)
                await channel.write_queue.put(ChannelFrame(payload=frames, should_close=False))
        except Exception as exc:  # whatever a reply does, it must not fail the task that produced it
            self._lost(task_id, reply_to, exc)
            await self._drop(used)

    @staticmethod
    def _lost(task_id: str, reply_to: str, exc: BaseException) -> None:
        log.warning("the reply for task %s to %r was lost (%s)", task_id, reply_to[:120], f"{type(exc).__name__}: {exc}"[:200])

    @staticmethod
    def _frames(channel: Any, reply_to: str, body: bytes, properties: Properties) -> bytes:
        if len(reply_to.encode()) > 255:
            raise ValueError("reply_to is longer than 255 bytes")
        data = encode_publish(
            channel.number, "", reply_to, body, properties, channel.max_content_size + FRAME_OVERHEAD, mandatory=False
        )
        if data is None:  # cannot happen: a reply's only header is the protocol version
            raise ValueError("the reply's properties could not be encoded")
        return data

    async def _open(self) -> tuple[Any, Any]:
        async with self._opening:
            # A closing socket can come before aiormq marks the channel closed: not that one again.
            if (
                self._channel is None
                or self._channel.is_closed
                or self._connection.is_closed
                or (self._tap is not None and self._tap.closing)
            ):
                await self._drop(self._connection)
                connection = await aconnect(self._settings, f"{self._name} replies pid={os.getpid()}")
                channel = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
                self._connection, self._channel, self._tap = connection, channel, connection.tap
            return self._connection, self._channel

    async def _drop(self, connection: Any) -> None:
        """Close ``connection`` if it is still the current one (another reply may have replaced it)."""
        if connection is None or connection is not self._connection:
            return
        self._connection, self._channel, self._tap = None, None, None
        if not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), timeout=self._settings.connect_timeout)
            except Exception:  # closing a broken connection: nothing more to do
                pass

    async def close(self) -> None:
        await self._drop(self._connection)
