"""Topology -> other formats: RabbitMQ definitions JSON, and a Mermaid diagram for docs."""

from __future__ import annotations

import re
from typing import Any

from amqptasks.core.topology import DEFAULT_EXCHANGE, Topology


def to_definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions for ``vhost``, importable with ``rabbitmqctl import_definitions``
    or the management UI.

    Exclusive queues are left out: they belong to one connection and cannot be pre-declared.
    No ``rabbit_version`` or ``vhosts`` are written, so importing never creates a vhost.
    """
    exchanges = [
        {
            "name": exchange.name,
            "vhost": vhost,
            "type": exchange.type,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": exchange.internal,
            "arguments": dict(exchange.arguments),
        }
        for exchange in topology.exchanges.values()
    ]
    queues = [
        {
            "name": queue.name,
            "vhost": vhost,
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            "arguments": queue.declare_arguments(),
        }
        for queue in topology.queues.values()
        if not queue.exclusive
    ]
    skipped = {q.name for q in topology.queues.values() if q.exclusive}
    bindings = [
        {
            "source": binding.source,
            "vhost": vhost,
            "destination": binding.destination,
            "destination_type": binding.destination_type,
            "routing_key": binding.routing_key,
            "arguments": dict(binding.arguments),
        }
        for binding in topology.bindings
        if not (binding.destination_type == "queue" and binding.destination in skipped)
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def _label(text: str) -> str:
    # Mermaid reads entity codes inside quoted labels; escaping these keeps names literal.
    escaped = text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    return f'"{escaped}"'


class _Ids:
    """Mermaid node ids: names contain dots and other characters ids may not; keep them unique."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], str] = {}
        self.used: set[str] = set()

    def get(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key not in self.ids:
            base = f"{kind[0]}_{re.sub(r'[^A-Za-z0-9_]', '_', name) or 'default'}"
            candidate, n = base, 1
            while candidate in self.used:
                n += 1
                candidate = f"{base}_{n}"
            self.used.add(candidate)
            self.ids[key] = candidate
        return self.ids[key]


def to_mermaid(topology: Topology) -> str:
    """A ``flowchart LR`` diagram: exchanges as hexagons labelled with their type, queues as
    cylinders, bindings as edges labelled with routing keys, dead-lettering as dashed edges."""
    ids = _Ids()
    lines = ["flowchart LR"]
    declared: set[str] = set()

    def exchange_node(name: str, kind: str | None = None) -> str:
        node = ids.get("exchange", name)
        if name not in declared:
            declared.add(name)
            shown = name or "(default exchange)"
            lines.append(f"    {node}{{{{{_label(f'{shown} ({kind})' if kind else shown)}}}}}")
        return node

    for exchange in topology.exchanges.values():
        exchange_node(exchange.name, exchange.type)
    for queue in topology.queues.values():
        lines.append(f"    {ids.get('queue', queue.name)}[({_label(queue.name)})]")
    for binding in topology.bindings:
        source = exchange_node(binding.source)
        if binding.destination_type == "exchange":
            target = exchange_node(binding.destination)
        else:
            target = ids.get("queue", binding.destination)
        label = binding.routing_key or ", ".join(f"{k}={v}" for k, v in binding.arguments.items())
        edge = f"-->|{_label(label)}|" if label else "-->"
        lines.append(f"    {source} {edge} {target}")
    for queue in topology.queues.values():
        if queue.dead_letter_exchange is None:
            continue
        key = queue.dead_letter_routing_key
        label = _label(f"dead-letter: {key}" if key else "dead-letter")
        if queue.dead_letter_exchange == DEFAULT_EXCHANGE and key:
            # Through the default exchange a dead letter goes straight to the queue named by the key.
            target = ids.get("queue", key)
        else:
            target = exchange_node(queue.dead_letter_exchange)
        lines.append(f"    {ids.get('queue', queue.name)} -.->|{label}| {target}")
    return "\n".join(lines) + "\n"
