"""Where a message goes when it cannot succeed: a pure decision from the topology."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amqptasks.core.delays import UNROUTABLE_SUFFIX
from amqptasks.core.envelope import (
    BROKER_DEATH_HEADERS,
    H_DEAD_AT,
    H_DEAD_REASON,
    H_DELAY_TO,
    H_ETA,
    H_EXC_MESSAGE,
    H_EXC_TYPE,
    H_ID,
    H_ORIGIN_EXCHANGE,
    H_ORIGIN_QUEUE,
    H_ORIGIN_ROUTING_KEY,
    H_RETRIES,
    H_TASK,
    H_TRACEBACK,
)
from amqptasks.core.topology import Binding, Queue, Topology

DEAD_SUFFIX = ".dead"


@dataclass(frozen=True)
class DeadLetterTarget:
    """Publish dead letters to ``exchange`` with ``routing_key``; ``declare`` names a queue we own."""

    exchange: str
    routing_key: str
    declare: str | None = None  # a fallback queue the worker must make sure exists


def fallback_queue(queue_name: str) -> Queue:
    """The durable ``<queue>.dead`` used when a queue has no dead-letter setting of its own."""
    return Queue(name=f"{queue_name}{DEAD_SUFFIX}")


def dead_letter_target(topology: Topology, queue_name: str) -> DeadLetterTarget:
    """The queue's own ``dead_letter`` setting, else the ``<queue>.dead`` fallback queue."""
    queue = topology.queues.get(queue_name)
    if queue is not None and queue.dead_letter_exchange is not None:
        # The broker's rule: no dead-letter routing key means "keep the message's routing key";
        # we republish ourselves, so the queue name stands in for it.
        return DeadLetterTarget(queue.dead_letter_exchange, queue.dead_letter_routing_key or queue_name)
    fallback = fallback_queue(queue_name)
    return DeadLetterTarget("", fallback.name, declare=fallback.name)


def implicit_queue(queue_name: str) -> tuple[Queue, Queue]:
    """A queue named on the command line that no file declares: durable, dead-lettering to
    ``<queue>.dead``. Returns (queue, its dead-letter queue)."""
    dead = fallback_queue(queue_name)
    queue = Queue(name=queue_name, dead_letter_exchange="", dead_letter_routing_key=dead.name)
    return queue, dead


def with_implicit_queues(topology: Topology, queue_names: list[str]) -> tuple[Topology, list[str]]:
    """``topology`` plus a declaration for every consumed queue it lacks; also the names added."""
    added: list[str] = []
    for name in queue_names:
        if name in topology.queues:
            continue
        queue, dead = implicit_queue(name)
        if dead.name not in topology.queues:
            topology = topology.with_queue(dead)
        topology = topology.with_queue(queue)
        added.append(name)
    return topology, added


def bindings_label(topology: Topology, queue_name: str) -> str:
    """``exchange=tasks(direct) key=celery, ...`` for the start-up banner."""
    parts = [f"exchange=(default) key={queue_name}"]
    for binding in topology.bindings_to(queue_name):
        parts.append(_describe(topology, binding))
    return ", ".join(parts)


def _describe(topology: Topology, binding: Binding) -> str:
    exchange = topology.exchanges.get(binding.source)
    kind = exchange.type if exchange is not None else "?"
    return f"exchange={binding.source}({kind}) key={binding.routing_key}"


# --- reading and replaying dead letters (for ``amqptasks dlq``) ------------------------------


@dataclass(frozen=True)
class DeadLetterInfo:
    """What a dead-lettered message says about itself: which task, why, when, from where."""

    task_id: str
    task: str
    reason: str
    exception: str
    dead_at_ms: int | None
    retries: int
    origin_queue: str | None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


_UTC = UTC


def _broker_origin(headers: Mapping[str, Any]) -> str | None:
    # Dead-lettered by the broker itself (TTL, delivery limit, overflow): x-death names the queue.
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return _text(deaths[0].get("queue")) or None
    return _text(headers.get("x-first-death-queue")) or None


#: What the broker's own dead-letter reasons (``x-death``) mean, for ``amqptasks dlq list``.
BROKER_REASONS = {
    "delivery_limit": "delivered more times than the queue's delivery limit without an ack",
    "expired": "its time to live ran out in the queue",
    "maxlen": "the queue was full (max_length / max_length_bytes)",
    "rejected": "a consumer rejected it without requeue",
}


def _latest_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # x-death lists the broker's dead-letterings, the latest first (the one that brought it here);
    # x-first-death-reason is the earliest: for a delayed task, the delay cascade's "expired".
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


def broker_reason(headers: Mapping[str, Any]) -> str:
    """Why the broker dead-lettered a message, e.g. ``delivery_limit (delivered more times than the
    queue's delivery limit without an ack) in queue celery``; "" when it did not."""
    latest = _latest_death(headers)
    if latest is not None:
        reason, queue = _text(latest.get("reason")), _text(latest.get("queue"))
    else:
        reason = _text(headers.get("x-last-death-reason")) or _text(headers.get("x-first-death-reason"))
        queue = _text(headers.get("x-last-death-queue")) or _text(headers.get("x-first-death-queue"))
    if not reason:
        return ""
    meaning = f" ({BROKER_REASONS[reason]})" if reason in BROKER_REASONS else ""
    return f"{reason}{meaning}" + (f" in queue {queue}" if queue else "")


def _death_time_ms(headers: Mapping[str, Any]) -> int | None:
    latest = _latest_death(headers)
    when = latest.get("time") if latest is not None else None
    if isinstance(when, int) and not isinstance(when, bool):
        return when * 1000  # AMQP timestamps are seconds
    if isinstance(when, datetime):  # pika decodes them to datetime (naive UTC)
        stamp = when.replace(tzinfo=when.tzinfo or _UTC).timestamp()
        return int(stamp * 1000)
    return None


def _delay_target(headers: Mapping[str, Any]) -> tuple[str, str] | None:
    value = headers.get(H_DELAY_TO)
    if isinstance(value, list | tuple) and len(value) == 2:
        return _text(value[0]), _text(value[1])
    return None


def unroutable_after_delay_reason(exchange: str, routing_key: str) -> str:
    """Why a delayed message sits in the delay cascade's unroutable queue."""
    where = f"queue {routing_key!r}" if exchange == "" else f"exchange {exchange!r} with routing key {routing_key!r}"
    return (f"destination {where} did not exist when the delay ended (the broker found no route from the "
            "delay cascade); `amqptasks dlq replay` sends a queue's messages back once it exists")


def describe_dead_letter(
    headers: Mapping[str, Any] | None, message_id: str | None = None, *, queue: str | None = None
) -> DeadLetterInfo:
    """Read the amqptasks (or broker) dead-letter headers of a message found in ``queue``.

    In the delay cascade's unroutable queue (``<prefix>.unroutable``) a message carries no reason
    of ours (the broker's alternate exchange put it there): its ``delay-to`` header says where it
    was going, which becomes the reason and, for a queue, the queue a replay sends it to. Otherwise
    the reason is ours when a worker dead-lettered it, else the broker's latest (``delivery_limit``,
    ``expired``, ``maxlen``, ``rejected``)."""
    headers = headers or {}
    exc_type = _text(headers.get(H_EXC_TYPE))
    exc_message = _text(headers.get(H_EXC_MESSAGE))
    dead_at = headers.get(H_DEAD_AT)
    if not (isinstance(dead_at, int) and not isinstance(dead_at, bool)):
        dead_at = _death_time_ms(headers)
    retries = headers.get(H_RETRIES)
    reason = _text(headers.get(H_DEAD_REASON))
    origin = _text(headers.get(H_ORIGIN_QUEUE))
    target = _delay_target(headers)
    if not reason and target is not None and queue is not None and queue.endswith(f".{UNROUTABLE_SUFFIX}"):
        reason = unroutable_after_delay_reason(*target)
        origin = origin or (target[1] if target[0] == "" else "")
    return DeadLetterInfo(
        task_id=_text(headers.get(H_ID)) or _text(message_id),
        task=_text(headers.get(H_TASK)),
        reason=reason or broker_reason(headers),
        exception=f"{exc_type}: {exc_message}" if exc_type else "",
        dead_at_ms=dead_at if isinstance(dead_at, int) and not isinstance(dead_at, bool) else None,
        retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else 0,
        origin_queue=origin or _broker_origin(headers),
    )


DEAD_LETTER_HEADERS = (
    H_DEAD_REASON,
    H_DELAY_TO, H_EXC_TYPE, H_EXC_MESSAGE, H_TRACEBACK, H_ORIGIN_QUEUE, H_ORIGIN_EXCHANGE,
    H_ORIGIN_ROUTING_KEY, H_DEAD_AT, *BROKER_DEATH_HEADERS,
)


def replay_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A replayed message's headers: the dead-letter record removed and the retry count reset."""
    kept = {k: v for k, v in (headers or {}).items() if k not in DEAD_LETTER_HEADERS}
    if H_RETRIES in kept:
        kept[H_RETRIES] = 0
    kept.pop(H_ETA, None)
    kept.pop(H_DELAY_TO, None)  # a replay is published to its queue directly
    return kept
