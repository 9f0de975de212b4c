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

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._connection: Any = None
        self._channel: Any = None
        self._opening = asyncio.Lock()

    async def publish(self, reply_to: str, body: bytes, properties: spec.Basic.Properties, task_id: str) -> None:
        """Send one reply; on any failure log it (naming the task) and drop the connection it used."""
        used: Any = None
        try:
            # Bounded: a publish on a connection the broker just closed can otherwise wait forever.
            async with asyncio.timeout(self._settings.confirm_timeout):
                used, channel = await self._open()
                await channel.basic_publish(body, exchange="", routing_key=reply_to, properties=properties, wait=False)
        except Exception as exc:  # whatever a reply does, it must not fail the task that produced it
            log.warning("the reply for task %s to %r was lost (%s)", task_id, reply_to[:120], f"{type(exc).__name__}: {exc}"[:200])
            await self._drop(used)

    async def _open(self) -> tuple[Any, Any]:
        async with self._opening:
            if self._channel is None or self._channel.is_closed or self._connection.is_closed:
                await self._drop(self._connection)
                connection = await aconnect(self._settings, f"{self._name} replies pid={os.getpid()}")
                channel = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
                self._connection, self._channel = connection, channel
            return self._connection, self._channel

    async def _drop(self, connection: Any) -> None:
        """Close ``connection`` if it is still the current one (another reply may have replaced it)."""
        if connection is None or connection is not self._connection:
            return
        self._connection, self._channel = None, None
        if not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), timeout=self._settings.connect_timeout)
            except Exception:  # closing a broken connection: nothing more to do
                pass

    async def close(self) -> None:
        await self._drop(self._connection)
