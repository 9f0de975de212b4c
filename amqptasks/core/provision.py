"""What an app, a worker or ``topology apply`` declares: the files' topology plus the delay cascade
and a landing queue for every destination a delayed message or a retry can be sent to."""

from __future__ import annotations

from collections.abc import Iterable

from amqptasks.core.delays import DELAY_EXCHANGE_PREFIX, delay_infrastructure, landing_for
from amqptasks.core.topology import DEFAULT_EXCHANGE, Topology, merge_all


def destinations(topology: Topology) -> list[tuple[str, str]]:
    """(exchange, routing key) of every queue (through the default exchange) and every route."""
    found: dict[tuple[str, str], None] = {}
    for name, queue in topology.queues.items():
        if not queue.exclusive:
            found[(DEFAULT_EXCHANGE, name)] = None
    for route in topology.routes:
        if route.queue is not None:
            found[(DEFAULT_EXCHANGE, route.queue)] = None
        elif route.exchange is not None:
            found[(route.exchange, route.routing_key or "")] = None
    return list(found)


def with_delays(
    topology: Topology, extra: Iterable[tuple[str, str]] = (), *, prefix: str = DELAY_EXCHANGE_PREFIX
) -> Topology:
    """``topology`` plus the delay cascade and landing queues for its destinations and ``extra``."""
    wanted = dict.fromkeys([*destinations(topology), *extra])
    landings = (landing_for(exchange, key, prefix=prefix) for exchange, key in wanted)
    return merge_all([topology, delay_infrastructure(prefix=prefix), *landings])
