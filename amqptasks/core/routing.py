"""Where a send goes, and what exactly it publishes. Pure: the sync and async adapters share it.

Routing, first match wins, field by field (as Celery merges its routing options):

1. the options given to the send (``apply_async(queue=..)``, ``send(routing_key=..)``),
2. the options of ``@app.task(...)``,
3. the first topology route whose glob matches the task name (``fnmatch``, case-sensitive),
4. the default: queue ``celery``.

``queue=q`` is shorthand for ``exchange=""`` (the default exchange) and ``routing_key=q``. The
exchange is taken from the first level that names one (or a queue); the routing key likewise. An
exchange without any routing key routes with ``""`` (as the topology loader reads a route that
names only an exchange: right for fanout); a routing key without any exchange goes through the
default exchange, i.e. to the queue of that name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from amqptasks.core import envelope
from amqptasks.core.delays import (
    DELAY_EXCHANGE_PREFIX,
    delay_routing_key,
    entry_exchange,
)
from amqptasks.core.topology import DEFAULT_EXCHANGE, DEFAULT_QUEUE, Route


@dataclass(frozen=True, slots=True)
class Destination:
    """An exchange and a routing key: everything ``basic.publish`` needs to know about "where"."""

    exchange: str
    routing_key: str

    def __str__(self) -> str:
        return f"exchange {self.exchange or '(default)'!r} routing key {self.routing_key!r}"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One level's say about routing; every field optional."""

    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None

    @classmethod
    def of(cls, route: Route | None) -> RouteSpec:
        if route is None:
            return NO_ROUTE
        return cls(queue=route.queue, exchange=route.exchange, routing_key=route.routing_key)

    def exchange_part(self) -> str | None:
        return DEFAULT_EXCHANGE if self.queue is not None else self.exchange

    def key_part(self) -> str | None:
        return self.queue if self.queue is not None else self.routing_key


NO_ROUTE = RouteSpec()


def match_route(task_name: str, routes: Sequence[Route]) -> Route | None:
    """The first route whose pattern matches ``task_name``, or None."""
    for route in routes:
        if fnmatchcase(task_name, route.pattern):
            return route
    return None


def resolve(
    send: RouteSpec,
    task: RouteSpec,
    route: RouteSpec,
    default_queue: str = DEFAULT_QUEUE,
) -> Destination:
    """Merge the levels (send, task, topology route) into one destination; see the module doc."""
    exchange: str | None = None
    routing_key: str | None = None
    for level in (send, task, route):
        if exchange is None:
            exchange = level.exchange_part()
        if routing_key is None:
            routing_key = level.key_part()
        if exchange is not None and routing_key is not None:
            break
    if exchange is None and routing_key is None:
        return Destination(DEFAULT_EXCHANGE, default_queue)
    return Destination(DEFAULT_EXCHANGE if exchange is None else exchange, routing_key or "")


def plan_delivery(
    destination: Destination, eta_ms: int | None, now_ms: int, delay_prefix: str = DELAY_EXCHANGE_PREFIX
) -> tuple[Destination, Destination | None]:
    """Where a message due at ``eta_ms`` is published, and the destination whose delay landing
    queue must exist (None when it is due now and goes straight to ``destination``).

    A future ``eta_ms`` goes to the delay cascade's entry exchange with a routing key spelling the
    delay and the destination (DESIGN §3); the broker holds it, no consumer does.
    """
    if eta_ms is None or eta_ms <= now_ms:
        return destination, None
    key = delay_routing_key(eta_ms - now_ms, destination.exchange, destination.routing_key)
    return Destination(entry_exchange(prefix=delay_prefix), key), destination


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded task message and where it goes: what the adapters publish, verbatim."""

    task_id: str
    task_name: str
    body: bytes
    properties: envelope.Properties
    destination: Destination
    landing: Destination | None = None  # a delayed message's real destination (its landing queue must exist)

    @property
    def wants_result(self) -> bool:
        return self.properties.reply_to is not None


def outgoing(
    *,
    task_id: str,
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    destination: Destination,
    want_result: bool,
    priority: int | None,
    expires_ms: int | None,
    eta_ms: int | None,
    headers: Mapping[str, Any],
    now_ms: int,
    delay_prefix: str = DELAY_EXCHANGE_PREFIX,
) -> Outgoing:
    """Encode a task message per docs/protocol.md. Replies use direct reply-to (see there why)."""
    publish_to, landing = plan_delivery(destination, eta_ms, now_ms, delay_prefix)
    if landing is not None:  # named in the message: the cascade's routing key has only a hash of it
        headers = {**headers, envelope.H_DELAY_TO: [landing.exchange, landing.routing_key]}
    body, properties = envelope.encode_new_task(
        task_id, task_name, args, kwargs, reply_to=envelope.DIRECT_REPLY_TO if want_result else None,
        priority=priority, eta_ms=eta_ms, expires_ms=expires_ms, extra_headers=headers, timestamp=now_ms // 1000,
    )
    return Outgoing(task_id, task_name, body, properties, publish_to, landing)
