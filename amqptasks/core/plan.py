"""Topology vs. what the broker holds -> a :class:`Plan`: what to create, what already matches,
and for every conflict each differing setting plus the way out.

Pure: the adapters observe the broker (management API or declare probes) and hand the result in
as :class:`ObservedState`; nothing here talks to a broker.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from amqptasks.core.durations import format_duration
from amqptasks.core.plan_types import (
    Difference,
    EntityPlan,
    ObservedExchange,
    ObservedState,
    Plan,
    Status,
)
from amqptasks.core.topology import Binding, Exchange, Queue, Topology

#: Queue arguments a policy can set too, by their policy key. A policy can supply a setting the
#: queue was declared without; it cannot override an argument the queue was declared with.
POLICY_KEYS: dict[str, str] = {
    "x-message-ttl": "message-ttl",
    "x-max-length": "max-length",
    "x-max-length-bytes": "max-length-bytes",
    "x-overflow": "overflow",
    "x-expires": "expires",
    "x-dead-letter-exchange": "dead-letter-exchange",
    "x-dead-letter-routing-key": "dead-letter-routing-key",
    "x-delivery-limit": "delivery-limit",
}
#: The YAML key that sets each queue argument, for advice phrased in the file's terms.
YAML_KEYS: dict[str, str] = {
    "x-queue-type": "type",
    "x-max-priority": "max_priority",
    "x-message-ttl": "message_ttl",
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-overflow": "overflow",
    "x-expires": "expires",
    "x-delivery-limit": "delivery_limit",
    "x-dead-letter-exchange": "dead_letter.exchange",
    "x-dead-letter-routing-key": "dead_letter.routing_key",
}
_DURATIONS = ("x-message-ttl", "x-expires")
_FLAGS = ("type", "durable", "auto_delete", "internal", "exclusive")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null"})
_NUMBER = (int, float, Decimal)


def same_value(expected: Any, actual: Any) -> bool:
    """Broker-equivalence of two argument values: numbers by value (1 == 1.0), bools only equal
    bools (True is not 1 here), mappings and lists element by element."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, _NUMBER) and isinstance(actual, _NUMBER):
        return expected == actual
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return expected.keys() == actual.keys() and all(same_value(expected[k], actual[k]) for k in expected)
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(same_value(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bytes) != isinstance(actual, bytes):
        # Some clients hand back long strings as bytes.
        as_text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in (expected, actual)]
        return bool(as_text[0] == as_text[1])
    return bool(expected == actual)


def _argument_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Difference]:
    keys = list(expected) + [k for k in actual if k not in expected]
    return [
        Difference(key, expected.get(key), actual.get(key))
        for key in keys
        if key not in expected or key not in actual or not same_value(expected[key], actual[key])
    ]


def queue_differences(queue: Queue, observed_arguments: Mapping[str, Any], durable: bool,
                      auto_delete: bool, exclusive: bool) -> list[Difference]:
    """The settings in which the broker's queue differs from ``queue``, flags first."""
    diffs = [
        Difference(flag, getattr(queue, flag), seen)
        for flag, seen in (("durable", durable), ("auto_delete", auto_delete), ("exclusive", exclusive))
        if getattr(queue, flag) != seen
    ]
    expected = queue.declare_arguments()
    actual = dict(observed_arguments)
    # Classic queues are declared without x-queue-type, but newer brokers report "classic".
    expected_type = expected.pop("x-queue-type", "classic")
    actual_type = actual.pop("x-queue-type", "classic")
    if expected_type != actual_type:
        diffs.append(Difference("x-queue-type", expected_type, actual_type))
    return diffs + _argument_differences(expected, actual)


def exchange_differences(exchange: Exchange, observed: ObservedExchange) -> list[Difference]:
    """The settings in which the broker's exchange differs from ``exchange``, flags first."""
    diffs = [
        Difference(name, getattr(exchange, name), getattr(observed, name))
        for name in ("type", "durable", "auto_delete", "internal")
        if getattr(exchange, name) != getattr(observed, name)
    ]
    return diffs + _argument_differences(exchange.arguments, observed.arguments)


def _yaml_value(key: str, value: Any) -> str:
    if key in _DURATIONS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return format_duration(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", value) \
            and value.lower() not in _YAML_WORDS:
        return value  # reads back as this very string; anything else is quoted
    return json.dumps(value, default=str)


def _file_fix(diff: Difference) -> str:
    """How to change the file so that it matches the broker for one difference."""
    key = YAML_KEYS.get(diff.field) or (diff.field if diff.field in _FLAGS else f"arguments.{diff.field}")
    if diff.actual is None:
        return f'remove "{key}"'
    return f"{key}: {_yaml_value(diff.field, diff.actual)}"


def policy_command(queue_name: str, definition: Mapping[str, Any]) -> str:
    """A ``rabbitmqctl set_policy`` command applying ``definition`` to exactly this queue."""
    pattern = shlex.quote(f"^{re.escape(queue_name)}$")
    body = shlex.quote(json.dumps(dict(definition), separators=(",", ":")))
    return f"rabbitmqctl set_policy {shlex.quote(queue_name + '-args')} {pattern} {body} --apply-to queues"


def queue_advice(queue: Queue, differences: Sequence[Difference]) -> str:
    """The ways out of a queue conflict, cheapest first, each naming what it costs."""
    retyping = any(d.field == "x-queue-type" for d in differences)
    # A policy cannot change the type; and a type's own settings (delivery_limit) go with the type.
    by_policy = [] if retyping else [
        d for d in differences if d.field in POLICY_KEYS and d.actual is None and d.expected is not None
    ]
    rest = [d for d in differences if d not in by_policy]
    name = queue.name
    lines: list[str] = []
    if by_policy:
        keys = ", ".join(f'"{YAML_KEYS[d.field]}"' for d in by_policy)
        definition = {POLICY_KEYS[d.field]: d.expected for d in by_policy}
        pronoun = "it" if len(by_policy) == 1 else "them"
        lines.append(f"remove {keys} from the file and set {pronoun} with a policy (no restart, no message loss): "
                     f"{policy_command(name, definition)}")
        lines.append("  (a queue follows one policy at a time: "
                     "merge these keys into any policy that already matches it)")
    if rest:
        fixes = "; ".join(_file_fix(d) for d in rest)
        lines.append(f"keep the broker's queue (no message loss): change the file to match it: {fixes}")
        retyped = next((d for d in rest if d.field == "x-queue-type"), None)
        if retyped is not None:
            # The usual case: a live classic queue, a file (or the built-in topology) now quorum.
            lines.append(f"or move it to a {retyped.expected} queue without losing messages (a queue's type never "
                         "changes in place): stop the producers, let the workers empty it (rabbitmqctl "
                         f"list_queues name messages), stop them, rabbitmqctl delete_queue {shlex.quote(name)}, "
                         f"start them again: it is declared anew as {retyped.expected}, with its bindings")
        lines.append(f"or delete and recreate it: rabbitmqctl delete_queue {shlex.quote(name)} - this loses the "
                     "messages in it, and its bindings must be re-applied (declaring the topology again "
                     "recreates the queue and its bindings)")
    return "\n".join(lines)


def exchange_advice(exchange: Exchange, differences: Sequence[Difference]) -> str:
    """The ways out of an exchange conflict: match the broker, or delete and recreate."""
    fixes = "; ".join(_file_fix(d) for d in differences)
    return "\n".join([
        f"keep the broker's exchange: change the file to match it: {fixes}",
        f"or delete and recreate it: rabbitmqadmin delete exchange name={shlex.quote(exchange.name)} - no messages "
        "are stored in an exchange, but its bindings go with it and must be re-applied (declaring the topology "
        "again does that), and publishes to it fail until then",
    ])


def binding_name(binding: Binding) -> str:
    """``source -> queue celery (routing key "celery")`` for plans and messages."""
    key = f' (routing key "{binding.routing_key}")' if binding.routing_key else ""
    args = f" {dict(binding.arguments)}" if binding.arguments else ""
    return f"{binding.source} -> {binding.destination_type} {binding.destination}{key}{args}"


def declare_order(topology: Topology) -> list[Exchange | Queue | Binding]:
    """Everything to declare, in an order the broker accepts: all exchanges (so exchange-to-exchange
    bindings need no ordering among them), then queues, then bindings."""
    return [*topology.exchanges.values(), *topology.queues.values(), *topology.bindings]


def plan_topology(topology: Topology, observed: ObservedState) -> Plan:
    """Diff ``topology`` against ``observed``: per entity ``create``, ``unchanged``, ``conflict``
    (with differences and advice) or ``unknown`` (that kind was not observable)."""
    entities: list[EntityPlan] = []
    status_of: dict[tuple[str, str], Status] = {}
    for exchange in topology.exchanges.values():
        entry = _plan_exchange(exchange, observed)
        status_of[("exchange", exchange.name)] = entry.status
        entities.append(entry)
    for queue in topology.queues.values():
        entry = _plan_queue(queue, observed)
        status_of[("queue", queue.name)] = entry.status
        entities.append(entry)
    for binding in topology.bindings:
        status: Status
        if observed.bindings is not None:
            status = "unchanged" if binding.key in observed.bindings else "create"
        elif "create" in (status_of.get(("exchange", binding.source)),
                          status_of.get((binding.destination_type, binding.destination))):
            status = "create"  # an end that does not exist yet cannot be bound already
        else:
            status = "unknown"
        entities.append(EntityPlan("binding", binding_name(binding), status, binding))
    return Plan(tuple(entities))


def _plan_exchange(exchange: Exchange, observed: ObservedState) -> EntityPlan:
    if observed.exchanges is None:
        return EntityPlan("exchange", exchange.name, "unknown", exchange)
    seen = observed.exchanges.get(exchange.name)
    if seen is None:
        return EntityPlan("exchange", exchange.name, "create", exchange)
    diffs = exchange_differences(exchange, seen)
    if not diffs:
        return EntityPlan("exchange", exchange.name, "unchanged", exchange)
    return EntityPlan("exchange", exchange.name, "conflict", exchange, tuple(diffs), exchange_advice(exchange, diffs))


def _plan_queue(queue: Queue, observed: ObservedState) -> EntityPlan:
    if observed.queues is None:
        return EntityPlan("queue", queue.name, "unknown", queue)
    seen = observed.queues.get(queue.name)
    if seen is None:
        return EntityPlan("queue", queue.name, "create", queue)
    diffs = queue_differences(queue, seen.arguments, seen.durable, seen.auto_delete, seen.exclusive)
    if not diffs:
        return EntityPlan("queue", queue.name, "unchanged", queue)
    return EntityPlan("queue", queue.name, "conflict", queue, tuple(diffs), queue_advice(queue, diffs))


def _shown(field: str, value: Any) -> str:
    if value is None:
        return "(not set)"
    text = json.dumps(value, default=str)
    if field in _DURATIONS and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        text += f" ({format_duration(value)})"
    return text


def describe_entry(entry: EntityPlan) -> str:
    """``exchange tasks (direct)``, ``queue celery (quorum)`` or ``binding <source> -> ...``."""
    entity = entry.entity
    if isinstance(entity, Exchange):
        return f"exchange {entity.name} ({entity.type})"
    if isinstance(entity, Queue):
        return f"queue {entity.name} ({entity.type})"
    return f"binding {entry.name}"


_MARKS = {"create": "+", "conflict": "!", "unknown": "?", "unchanged": "="}


def render_plan(plan: Plan, *, verbose: bool = False) -> str:
    """The plan as text: a line per entity to create, in conflict or unknown (unchanged ones
    only counted unless ``verbose``), each conflict's differences and way out, and a summary."""
    lines: list[str] = []
    counts = {"create": 0, "unchanged": 0, "conflict": 0, "unknown": 0}
    for entry in plan.entities:
        counts[entry.status] += 1
        if entry.status == "unchanged" and not verbose:
            continue
        suffix = {
            "create": "create",
            "unchanged": "unchanged",
            "conflict": "CONFLICT",
            "unknown": "unknown (cannot be observed; a declare will settle it)",
        }[entry.status]
        lines.append(f"{_MARKS[entry.status]} {describe_entry(entry)}: {suffix}")
        for diff in entry.differences:
            lines.append(f"    {diff.field}: expected {_shown(diff.field, diff.expected)}, "
                         f"actual {_shown(diff.field, diff.actual)}")
        if entry.advice:
            lines.append("    way out:")
            for line in entry.advice.splitlines():
                # Advice lines starting with spaces continue the option above them.
                lines.append(f"        {line.strip()}" if line.startswith(" ") else f"      - {line}")
    if counts["unchanged"] and not verbose and len(lines) > 0:
        lines.append(f"= {counts['unchanged']} unchanged (use verbose to list them)")
    lines.append(_summary(counts, len(plan.entities)))
    return "\n".join(lines)


def _summary(counts: Mapping[str, int], total: int) -> str:
    if total == 0:
        return "No changes: the topology is empty."
    if counts["unchanged"] == total:
        return f"No changes: {total} {'entity already matches' if total == 1 else 'entities already match'}."
    parts = [f"{counts['create']} to create", f"{counts['unchanged']} unchanged"]
    if counts["unknown"]:
        parts.append(f"{counts['unknown']} unknown")
    conflicts = counts["conflict"]
    parts.append(f"{conflicts} conflict{'s' if conflicts != 1 else ''}")
    return f"Plan: {', '.join(parts)}."
