"""What an app, a worker or ``topology apply`` declares for delays: the cascade, and the route
to a destination (``delays.landing_for``) only for destinations that need one now.

Routes are declared lazily — a worker for the queues it consumes (its retries land there), a
producer on its first delayed send to a destination, after checking it exists — rather than one per
queue of the topology: a queue target's route is two bindings, but an exchange target's includes a
landing queue, a quorum queue by default, and RabbitMQ copes badly with many of them (two brokers
here stopped completing handshakes after ~300 quorum queues had come and gone).
"""

from __future__ import annotations

from collections.abc import Iterable

from amqptasks.core.delays import (
    DELAY_EXCHANGE_PREFIX,
    LEVEL_QUEUE_TYPE,
    delay_infrastructure,
    landing_for,
)
from amqptasks.core.topology import Topology, merge_all


def with_delays(
    topology: Topology,
    landings: Iterable[tuple[str, str]] = (),
    *,
    prefix: str = DELAY_EXCHANGE_PREFIX,
    queue_type: str = LEVEL_QUEUE_TYPE,
) -> Topology:
    """``topology`` plus the delay cascade and a landing queue for each (exchange, routing key)."""
    wanted = dict.fromkeys(landings)
    parts = (landing_for(exchange, key, prefix=prefix, queue_type=queue_type) for exchange, key in wanted)
    return merge_all([topology, delay_infrastructure(prefix=prefix, queue_type=queue_type), *parts])
