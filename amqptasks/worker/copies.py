"""Copies the worker publishes of a delivery before acking it: dead letters and retries.

Both are confirmed (a copy the broker did not take would be a lost message once the original is
acked) and built so that they always encode, whatever the original carried (aio/wire.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import aiormq
import aiormq.exceptions
from pamqp import commands as spec

from amqptasks.aio import wire
from amqptasks.core.deadletter import DeadLetterTarget, fallback_queue
from amqptasks.core.delays import delay_routing_key, entry_exchange
from amqptasks.core.envelope import dead_letter_headers, retry_headers
from amqptasks.core.retry import Retry
from amqptasks.errors import AmqpTasksError
from amqptasks.settings import Settings

log = logging.getLogger("amqptasks.worker")


def republished(
    props: spec.Basic.Properties, headers: dict[str, Any], *, keep_reply_to: bool
) -> spec.Basic.Properties:
    """Properties of a copy we publish of a delivery (a dead letter, a retry): persistent, new headers.

    Whatever the original carried, the copy must encode: strings that were not UTF-8 become text,
    header values pamqp cannot write become their repr (aio/wire.py).
    """
    header_id = headers.get("id")
    message_id = wire.text(props.message_id) or (header_id if isinstance(header_id, str) and header_id else None)
    return wire.CopyProperties(
        content_type=wire.text(props.content_type),
        content_encoding=wire.text(props.content_encoding),
        delivery_mode=2,
        message_id=message_id or f"copy-{time.time_ns()}",
        correlation_id=wire.text(props.correlation_id),
        reply_to=wire.text(props.reply_to) if keep_reply_to else None,
        priority=props.priority,
        timestamp=props.timestamp,
        headers=wire.encodable_headers(headers),
    )


class CopyPublisher:
    """Publishes dead letters and retries on one confirm channel."""

    def __init__(self, confirm: aiormq.abc.AbstractChannel, targets: Mapping[str, DeadLetterTarget], settings: Settings) -> None:
        self._confirm = confirm
        self._targets = targets
        self._settings = settings

    async def dead_letter(
        self,
        delivery: aiormq.abc.DeliveredMessage,
        queue: str,
        *,
        reason: str,
        exc: tuple[str, str, str] = ("", "", ""),
    ) -> None:
        """Publish a copy with the reason, confirmed, BEFORE the original is acked."""
        props = delivery.header.properties
        method = delivery.delivery
        assert not isinstance(method, spec.Basic.GetEmpty)  # a delivery, never an empty basic.get
        raw_headers: Mapping[str, Any] = props.headers if isinstance(props.headers, Mapping) else {}
        headers = dead_letter_headers(
            raw_headers,
            reason=reason,
            queue=queue,
            exchange=method.exchange or "",
            routing_key=method.routing_key or "",
            now_ms=int(time.time() * 1000),
            exc_type=exc[0],
            exc_message=exc[1],
            traceback=exc[2],
        )
        # No reply_to: whoever waited for this task has had its error reply.
        properties = republished(props, headers, keep_reply_to=False)
        target = self._targets[queue]
        try:
            await self._publish(delivery.body, target, properties)
        except aiormq.exceptions.PublishError:
            # The configured dead-letter route reaches no queue: never drop, use <queue>.dead.
            fallback = fallback_queue(queue).name
            log.error("dead-letter route %s/%s of %s reaches no queue; using %s", target.exchange, target.routing_key, queue, fallback)
            await self._confirm.queue_declare(fallback, durable=True)
            await self._publish(delivery.body, DeadLetterTarget("", fallback), properties)

    async def retry(self, delivery: aiormq.abc.DeliveredMessage, queue: str, decision: Retry) -> None:
        """Republish to this queue through the delay cascade, confirmed, before the ack (never requeue)."""
        props = delivery.header.properties
        now_ms = int(time.time() * 1000)
        delay_ms = math.ceil(decision.countdown * 1000)
        headers = retry_headers(
            props.headers, retries=decision.retries, due_ms=now_ms + delay_ms, delayed_to_queue=queue if delay_ms > 0 else None
        )
        properties = republished(props, headers, keep_reply_to=True)  # the caller still waits
        if delay_ms <= 0:
            target = DeadLetterTarget("", queue)
        else:
            target = DeadLetterTarget(
                entry_exchange(prefix=self._settings.delay_prefix), delay_routing_key(delay_ms, "", queue)
            )
        await self._publish(delivery.body, target, properties)

    async def publish(self, body: bytes, target: DeadLetterTarget, properties: spec.Basic.Properties) -> None:
        """Publish a copy to ``target``, mandatory, and wait for its confirm (worker/release.py)."""
        await self._publish(body, target, properties)

    async def _publish(self, body: bytes, target: DeadLetterTarget, properties: spec.Basic.Properties) -> None:
        if target.declare:
            await self._confirm.queue_declare(target.declare, durable=True)
        confirmation = await asyncio.wait_for(
            self._confirm.basic_publish(
                body, exchange=target.exchange, routing_key=target.routing_key, properties=properties, mandatory=True
            ),
            timeout=self._settings.confirm_timeout,
        )
        if not isinstance(confirmation, spec.Basic.Ack):
            raise AmqpTasksError(f"the broker did not confirm a dead letter to {target.exchange}/{target.routing_key}")
