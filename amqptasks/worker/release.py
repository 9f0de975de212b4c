"""Handing back a delivery that never started, without spending the queue's delivery limit.

Every way an AMQP 0.9.1 consumer gives a message back counts as a delivery towards a quorum queue's
``x-delivery-limit``: ``basic.reject`` / ``basic.nack`` with requeue, ``basic.cancel`` then closing
the channel, closing the channel or the connection (measured on RabbitMQ 3.10.8 and 4.0.5 with
scripts/measure_delivery_count.py: each one adds 1 to ``x-delivery-count``, and the message is
dead-lettered with reason ``delivery_limit`` past the limit; RabbitMQ 4.0 sets a limit of 20 on
every quorum queue that has none). A worker that requeued its prefetched messages at every
graceful stop would, after 20 restarts, have a message dead-lettered that never ran.

So a stopping worker hands such a message back as a fresh copy: the same body and task headers,
published (confirmed, mandatory) to the queue it came from, and only then is the original acked:
late-ack semantics hold, the message is never lost, at worst (a crash between the confirm and the
ack) it is in the queue twice. The copy goes to the back of the queue. When the copy cannot be
published the caller requeues the original as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiormq
import aiormq.exceptions

from amqptasks.core.deadletter import DeadLetterTarget
from amqptasks.errors import AmqpTasksError
from amqptasks.worker.copies import CopyPublisher, republished

log = logging.getLogger("amqptasks.worker")

#: Headers the broker sets on delivery; a fresh copy must not carry them.
BROKER_DELIVERY_HEADERS = frozenset({"x-delivery-count"})


def fresh_headers(headers: Any) -> dict[str, Any]:
    """The delivery's headers minus those the broker adds on delivery."""
    if not isinstance(headers, Mapping):
        return {}
    return {key: value for key, value in headers.items() if key not in BROKER_DELIVERY_HEADERS}


async def hand_back(copies: CopyPublisher, delivery: aiormq.abc.DeliveredMessage, queue: str) -> bool:
    """Publish a fresh copy of ``delivery`` to ``queue``, confirmed. True: the caller acks the
    original. False: it could not (logged); the caller requeues the original instead."""
    props = delivery.header.properties
    properties = republished(props, fresh_headers(props.headers), keep_reply_to=True)  # the caller still waits
    try:
        await copies.publish(delivery.body, DeadLetterTarget("", queue), properties)
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, OSError,
            TimeoutError, AmqpTasksError) as exc:
        log.warning("could not hand back an unstarted message to %s (%s: %s); requeueing it", queue, type(exc).__name__, exc)
        return False
    return True
