"""Where a message goes when it cannot succeed: a pure decision from the topology."""

from __future__ import annotations

from dataclasses import dataclass

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


def implicit_queue(topology: Topology, queue_name: str) -> tuple[Queue, Queue]:
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
        queue, dead = implicit_queue(topology, name)
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
