"""Replies to callers (RPC results) go out on a connection of their own.

A reply is published to whatever ``reply_to`` the *sender* wrote. RabbitMQ 3.10 answers a malformed
direct reply-to address (``amq.rabbitmq.reply-to.<garbage>``) by closing the connection with
541 INTERNAL_ERROR. On the consuming connection that would requeue every unacked delivery, and the
bad message would come back and do it again: one message anyone can send would become a loop of
re-runs (found by tests/faults/test_poison.py). On this connection a bad address costs only that
reply; the connection is opened again for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec

from amqptasks.aio.connection import aconnect

if TYPE_CHECKING:
    from amqptasks.settings import Settings

log = logging.getLogger("amqptasks.worker")


class ReplyPublisher:
    """Publishes replies on a lazily opened connection; a failed reply is logged, never raised."""

    def __init__(self, settings: Settings, name: str, recoverable: tuple[type[BaseException], ...]) -> None:
        self._settings = settings
        self._name = name
        self._recoverable = recoverable
        self._connection: Any = None
        self._channel: Any = None
        self._opening = asyncio.Lock()

    async def publish(self, reply_to: str, body: bytes, properties: spec.Basic.Properties, task_id: str) -> None:
        """Send one reply; on any connection failure log it (naming the task) and drop the connection."""
        try:
            # Bounded: a publish on a connection the broker just closed can otherwise wait forever.
            async with asyncio.timeout(self._settings.confirm_timeout):
                channel = await self._open()
                await channel.basic_publish(body, exchange="", routing_key=reply_to, properties=properties, wait=False)
        except self._recoverable as exc:
            log.warning("the reply for task %s to %r was lost (%s)", task_id, reply_to[:120], f"{type(exc).__name__}: {exc}"[:200])
            await self.close()

    async def _open(self) -> Any:
        async with self._opening:
            if self._channel is None or self._channel.is_closed or self._connection.is_closed:
                await self.close()
                self._connection = await aconnect(self._settings, f"{self._name} replies pid={os.getpid()}")
                channel = await self._connection.channel(publisher_confirms=False)
                self._channel = await channel.get_underlay_channel()
            return self._channel

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except self._recoverable:
                pass
