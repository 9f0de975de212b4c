"""Semantic checks of a Topology: values in range, names allowed, every reference declared.

Pure: takes a :class:`Topology` (from the loader or built in code) and returns every problem as a
:class:`TopologyIssue`; raises nothing. Structural problems of YAML files (unknown keys, wrong
value types, bad durations) are the loader's job, because only it sees the file's text; the type
checks here repeat them for topologies built in code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amqptasks.core.topology import (
    DEFAULT_EXCHANGE,
    EXCHANGE_TYPES,
    MAX_NAME_BYTES,
    OVERFLOW_MODES,
    QUEUE_TYPES,
    Binding,
    Exchange,
    Origin,
    Queue,
    Route,
    Topology,
)
from amqptasks.errors import TopologyIssue

#: Exchanges every vhost has; they may be binding sources, dead-letter and route targets.
BUILTIN_EXCHANGES: frozenset[str] = frozenset(
    {"amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match", "amq.rabbitmq.trace"}
)
RESERVED_PREFIX = "amq."
HEADERS_X_MATCH: tuple[str, ...] = ("all", "any", "all-with-x", "any-with-x")


@dataclass(frozen=True)
class SourceMap:
    """Where things were written, so issues point at the offending key rather than the entity.

    ``origins`` maps a key path (``queues.celery.max_priority``) to the place of its value;
    ``binding_paths`` maps :attr:`Binding.key` to the key path of the binding in its file.
    """

    origins: Mapping[str, Origin] = field(default_factory=dict)
    binding_paths: Mapping[tuple[Any, ...], str] = field(default_factory=dict)


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def describe(value: object) -> str:
    """A value's YAML kind and value for messages: ``the string "5"``, ``the boolean true``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def is_int(value: object) -> bool:
    """True for ints that are not bools (YAML ``yes`` must never pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


class _Collector:
    def __init__(self, source_map: SourceMap | None) -> None:
        self.map = source_map or SourceMap()
        self.issues: list[TopologyIssue] = []

    def add(self, path: str, fallback: Origin | None, message: str) -> None:
        origin = self._locate(path) or fallback
        file = origin.file if origin else "<topology>"
        self.issues.append(TopologyIssue(file, origin.line if origin else None, path, message))

    def _locate(self, path: str) -> Origin | None:
        # Walk up the key path: a missing value is best reported at its parent's line.
        while path:
            if path in self.map.origins:
                return self.map.origins[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]
        return None


def validate(
    topology: Topology, source_map: SourceMap | None = None, *, references: bool = True
) -> list[TopologyIssue]:
    """Every semantic problem of ``topology``; an empty list means it may be declared.

    ``references=False`` skips "is it declared?" checks (the loader does so when a file could not
    be parsed, since its entities are then missing and every reference to them would be noise).
    """
    out = _Collector(source_map)
    for name, exchange in topology.exchanges.items():
        _check_exchange(out, name, exchange)
    for name, queue in topology.queues.items():
        _check_queue(out, topology, name, queue, references)
    for binding in topology.bindings:
        _check_binding(out, topology, binding, references)
    for route in topology.routes:
        _check_route(out, topology, route, references)
    return out.issues


def _check_name(out: _Collector, kind: str, path: str, name: object, origin: Origin | None) -> None:
    if not isinstance(name, str):
        out.add(path, origin, f"a {kind} name must be a string, got {describe(name)}")
    elif name == "":
        fix = (
            'the default exchange "" always exists: remove this entry'
            if kind == "exchange"
            else "give the queue a name (server-named queues cannot be declared from a file)"
        )
        out.add(path, origin, f"empty {kind} name: {fix}")
    elif name.startswith(RESERVED_PREFIX):
        out.add(path, origin,
                f'{kind} name "{name}" is reserved (names starting with "amq." belong to RabbitMQ): rename it')
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        size = len(name.encode("utf-8"))
        out.add(path, origin,
                f"{kind} name is {size} bytes long; RabbitMQ allows at most {MAX_NAME_BYTES} (UTF-8): shorten it")


def _check_flags(out: _Collector, path: str, entity: Exchange | Queue, names: tuple[str, ...]) -> None:
    for flag in names:
        value = getattr(entity, flag)
        if not isinstance(value, bool):
            out.add(f"{path}.{flag}", entity.origin, f"{flag} must be true or false, got {describe(value)}")


def _check_arguments(out: _Collector, path: str, arguments: object, origin: Origin | None) -> None:
    if not isinstance(arguments, Mapping):
        out.add(path, origin, f"arguments must be a mapping of name to value, got {describe(arguments)}")
        return
    for key in arguments:
        if not isinstance(key, str) or not key:
            out.add(path, origin, f"argument names must be non-empty strings, got {describe(key)}: quote it")


def _check_exchange(out: _Collector, name: str, exchange: Exchange) -> None:
    path = f"exchanges.{name}"
    _check_name(out, "exchange", path, exchange.name, exchange.origin)
    if exchange.type not in EXCHANGE_TYPES:
        hint = suggest(str(exchange.type), EXCHANGE_TYPES)
        out.add(f"{path}.type", exchange.origin,
                f'unknown exchange type "{exchange.type}"{hint}: use one of {", ".join(EXCHANGE_TYPES)}')
    _check_flags(out, path, exchange, ("durable", "auto_delete", "internal"))
    _check_arguments(out, f"{path}.arguments", exchange.arguments, exchange.origin)


# (field, yaml key, minimum, maximum, what the bound means)
_QUEUE_NUMBERS: tuple[tuple[str, str, int, int | None, str], ...] = (
    ("max_priority", "max_priority", 1, 255, "between 1 and 255 (RabbitMQ advises at most 10)"),
    ("message_ttl_ms", "message_ttl", 0, None, "a duration of 0 or more"),
    ("max_length", "max_length", 0, None, "an integer of 0 or more"),
    ("max_length_bytes", "max_length_bytes", 0, None, "an integer of 0 or more"),
    ("expires_ms", "expires", 1, None, "a duration of at least 1ms (the broker refuses 0)"),
    ("delivery_limit", "delivery_limit", -1, None, "an integer of 0 or more, or -1 for no limit (RabbitMQ 4.0+)"),
)


def _check_queue(out: _Collector, topology: Topology, name: str, queue: Queue, references: bool) -> None:
    path = f"queues.{name}"
    origin = queue.origin
    _check_name(out, "queue", path, queue.name, origin)
    if queue.type not in QUEUE_TYPES:
        out.add(f"{path}.type", origin,
                f'unknown queue type "{queue.type}"{suggest(str(queue.type), QUEUE_TYPES)}: use classic or quorum')
    _check_flags(out, path, queue, ("durable", "auto_delete", "exclusive"))
    for attr, key, low, high, meaning in _QUEUE_NUMBERS:
        value = getattr(queue, attr)
        if value is None:
            continue
        if not is_int(value) or value < low or (high is not None and value > high):
            out.add(f"{path}.{key}", origin, f"{key} must be {meaning}, got {describe(value)}")
    if queue.overflow is not None and queue.overflow not in OVERFLOW_MODES:
        out.add(f"{path}.overflow", origin,
                f'unknown overflow "{queue.overflow}"{suggest(str(queue.overflow), OVERFLOW_MODES)}: '
                f'use one of {", ".join(OVERFLOW_MODES)}')
    _check_arguments(out, f"{path}.arguments", queue.arguments, origin)
    if queue.type == "quorum":
        _check_quorum(out, path, queue)
    elif queue.delivery_limit is not None:
        out.add(f"{path}.delivery_limit", origin,
                "delivery_limit applies only to quorum queues: set type: quorum or remove delivery_limit")
    _check_dead_letter(out, topology, path, queue, references)


def _check_quorum(out: _Collector, path: str, queue: Queue) -> None:
    if queue.durable is not True:
        out.add(f"{path}.durable", queue.origin, "quorum queues are always durable: remove durable: false")
    if queue.exclusive is True:
        out.add(f"{path}.exclusive", queue.origin,
                "quorum queues cannot be exclusive: remove exclusive or use type: classic")
    if queue.auto_delete is True:
        out.add(f"{path}.auto_delete", queue.origin,
                "quorum queues cannot be auto-delete: remove auto_delete or use type: classic")
    if queue.max_priority is not None:
        out.add(f"{path}.max_priority", queue.origin,
                "max_priority is not supported by quorum queues (RabbitMQ refuses x-max-priority on them): remove it "
                "(on RabbitMQ 4.0+ a quorum queue has two priorities without it: 5-255 before 0-4), or use type: classic")
    if queue.overflow == "reject-publish-dlx":
        out.add(f"{path}.overflow", queue.origin,
                "quorum queues do not support overflow reject-publish-dlx: use drop-head or reject-publish")


def _check_dead_letter(out: _Collector, topology: Topology, path: str, queue: Queue, references: bool) -> None:
    # Typed str | None, but a YAML file (or a hand-built Queue) can put anything there: checked as objects.
    dlx: object = queue.dead_letter_exchange
    key: object = queue.dead_letter_routing_key
    where = f"{path}.dead_letter"
    if dlx is not None and not isinstance(dlx, str):
        out.add(f"{where}.exchange", queue.origin, f"dead_letter.exchange must be a string, got {describe(dlx)}")
        return
    if key is not None and not isinstance(key, str):
        out.add(f"{where}.routing_key", queue.origin, f"dead_letter.routing_key must be a string, got {describe(key)}")
        return
    if dlx is None:
        if key is not None:
            out.add(f"{where}.routing_key", queue.origin,
                    "dead_letter.routing_key needs dead_letter.exchange (use \"\" for the default exchange)")
        return
    if not references:
        return
    if dlx == DEFAULT_EXCHANGE:
        # Through the default exchange the routing key is the queue name; without one, the
        # message's own key would be used, which usually names this very queue.
        if not key:
            out.add(where, queue.origin,
                    'dead_letter.exchange "" (the default exchange) needs a routing_key naming the dead-letter queue')
        elif key not in topology.queues:
            out.add(f"{where}.routing_key", queue.origin,
                    f'dead-letter queue "{key}" is not declared{suggest(key, topology.queues)}: declare it under queues:')
    elif dlx not in topology.exchanges and dlx not in BUILTIN_EXCHANGES:
        out.add(f"{where}.exchange", queue.origin,
                f'dead-letter exchange "{dlx}" is not declared{suggest(dlx, topology.exchanges)}: '
                "declare it under exchanges:")


def _binding_path(out: _Collector, binding: Binding) -> str:
    try:
        known = out.map.binding_paths.get(binding.key)
    except TypeError:  # unhashable argument values in a hand-built binding
        known = None
    if known:
        return known
    section = "exchanges" if binding.destination_type == "exchange" else "queues"
    return f"{section}.{binding.destination}.bindings"


def _check_binding(out: _Collector, topology: Topology, binding: Binding, references: bool) -> None:
    path = _binding_path(out, binding)
    origin = binding.origin
    if binding.destination_type not in ("queue", "exchange"):
        out.add(path, origin,
                f'destination_type must be "queue" or "exchange", got {describe(binding.destination_type)}')
        return
    routing_key: object = binding.routing_key  # typed str; a YAML file can put anything there
    if not isinstance(routing_key, str):
        out.add(f"{path}.routing_key", origin,
                f"routing_key must be a string, got {describe(routing_key)}: quote it")
    _check_arguments(out, f"{path}.arguments", binding.arguments, origin)
    source = binding.source
    if source == DEFAULT_EXCHANGE:
        out.add(f"{path}.exchange", origin,
                'the default exchange "" cannot be bound to (it already routes to every queue by name): '
                "bind to a declared exchange instead")
        return
    if references and source not in topology.exchanges and source not in BUILTIN_EXCHANGES:
        out.add(f"{path}.exchange", origin,
                f'binding source exchange "{source}" is not declared{suggest(source, topology.exchanges)}: '
                "declare it under exchanges: or fix the name")
    declared = topology.queues if binding.destination_type == "queue" else topology.exchanges
    if references and binding.destination not in declared:
        out.add(path, origin, f'binding destination {binding.destination_type} "{binding.destination}" is not declared')
    source_exchange = topology.exchanges.get(source)
    x_match = binding.arguments.get("x-match") if isinstance(binding.arguments, Mapping) else None
    if source_exchange is not None and source_exchange.type == "headers" and x_match is not None \
            and x_match not in HEADERS_X_MATCH:
        out.add(f"{path}.arguments", origin,
                f'x-match must be one of {", ".join(HEADERS_X_MATCH)}, got {describe(x_match)}')


def _check_route(out: _Collector, topology: Topology, route: Route, references: bool) -> None:
    path = f"routes.{route.pattern}"
    origin = route.origin
    if not isinstance(route.pattern, str) or not route.pattern.strip():
        out.add(path, origin, "a route needs a task name pattern, like \"emails.*\" or \"reports.build\"")
        return
    if route.queue is not None and route.exchange is not None:
        out.add(path, origin, "a route sets either queue or exchange (+ routing_key), not both: remove one")
        return
    if route.queue is None and route.exchange is None:
        out.add(path, origin, "a route needs a target: queue: <name>, or exchange: <name> with a routing_key")
        return
    if route.queue is not None:
        if route.routing_key is not None:
            out.add(f"{path}.routing_key", origin,
                    "routing_key applies only with exchange: a queue route publishes with the queue's name; remove it")
        if references and route.queue not in topology.queues:
            out.add(f"{path}.queue", origin,
                    f'route target queue "{route.queue}" is not declared{suggest(route.queue, topology.queues)}: '
                    "declare it under queues:")
        return
    exchange = route.exchange
    if exchange == DEFAULT_EXCHANGE:
        out.add(f"{path}.exchange", origin,
                f'to publish through the default exchange, write queue: {route.routing_key or "<name>"} instead')
    elif references and exchange not in topology.exchanges and exchange not in BUILTIN_EXCHANGES:
        out.add(f"{path}.exchange", origin,
                f'route target exchange "{exchange}" is not declared{suggest(str(exchange), topology.exchanges)}: '
                "declare it under exchanges:")
    elif exchange is not None and exchange in topology.exchanges and topology.exchanges[exchange].internal:
        out.add(f"{path}.exchange", origin,
                f'exchange "{exchange}" is internal, so nothing can publish to it: route to another exchange')
