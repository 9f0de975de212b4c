"""The topology model: frozen descriptions of exchanges, queues, bindings and routes.

Pure data: nothing here talks to a broker. The loader builds these from YAML, the planner turns
them into declare steps, the adapters execute those steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from amqptasks.errors import TopologyError, TopologyIssue

ExchangeType = Literal["direct", "topic", "fanout", "headers"]
QueueType = Literal["classic", "quorum"]
Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]

EXCHANGE_TYPES: tuple[str, ...] = ("direct", "topic", "fanout", "headers")
QUEUE_TYPES: tuple[str, ...] = ("classic", "quorum")
OVERFLOW_MODES: tuple[str, ...] = ("drop-head", "reject-publish", "reject-publish-dlx")
DEFAULT_EXCHANGE = ""
DEFAULT_QUEUE = "celery"
MAX_NAME_BYTES = 255


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Origin:
    """Where an entity was defined, for error messages: file and 1-based line."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Exchange:
    """An exchange as the files describe it."""

    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] = field(default_factory=lambda: _frozen(None))
    origin: Origin | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _frozen(self.arguments))


@dataclass(frozen=True)
class Queue:
    """A queue as the files describe it. Durations are already in milliseconds."""

    name: str
    type: str = "classic"
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False
    max_priority: int | None = None
    message_ttl_ms: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str | None = None
    expires_ms: int | None = None
    delivery_limit: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=lambda: _frozen(None))
    origin: Origin | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _frozen(self.arguments))

    def declare_arguments(self) -> dict[str, Any]:
        """The ``x-*`` arguments sent with ``queue.declare``: named settings plus verbatim extras."""
        args: dict[str, Any] = {}
        if self.type != "classic":
            args["x-queue-type"] = self.type
        named = (
            ("x-max-priority", self.max_priority),
            ("x-message-ttl", self.message_ttl_ms),
            ("x-max-length", self.max_length),
            ("x-max-length-bytes", self.max_length_bytes),
            ("x-overflow", self.overflow),
            ("x-expires", self.expires_ms),
            ("x-delivery-limit", self.delivery_limit),
            ("x-dead-letter-exchange", self.dead_letter_exchange),
            ("x-dead-letter-routing-key", self.dead_letter_routing_key),
        )
        args.update({key: value for key, value in named if value is not None})
        args.update(self.arguments)
        return args


@dataclass(frozen=True)
class Binding:
    """``source`` exchange routes to ``destination`` (a queue or an exchange) on ``routing_key``."""

    source: str
    destination: str
    destination_type: Literal["queue", "exchange"] = "queue"
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=lambda: _frozen(None))
    origin: Origin | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _frozen(self.arguments))

    @property
    def key(self) -> tuple[str, str, str, str, tuple[tuple[str, Any], ...]]:
        """Identity of a binding, as the broker sees it."""
        args = tuple(sorted((k, repr(v)) for k, v in self.arguments.items()))
        return (self.source, self.destination_type, self.destination, self.routing_key, args)


@dataclass(frozen=True)
class Route:
    """Where sends of tasks whose name matches ``pattern`` (a glob) go by default.

    Either ``queue`` (published through the default exchange) or ``exchange`` + ``routing_key``.
    """

    pattern: str
    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Topology:
    """Everything the files declare. Maps are keyed by name; bindings and routes keep file order."""

    exchanges: Mapping[str, Exchange] = field(default_factory=lambda: _frozen(None))
    queues: Mapping[str, Queue] = field(default_factory=lambda: _frozen(None))
    bindings: tuple[Binding, ...] = ()
    routes: tuple[Route, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchanges", _frozen(self.exchanges))
        object.__setattr__(self, "queues", _frozen(self.queues))
        object.__setattr__(self, "bindings", tuple(self.bindings))
        object.__setattr__(self, "routes", tuple(self.routes))

    def bindings_to(self, destination: str) -> tuple[Binding, ...]:
        """The bindings whose destination is ``destination`` (a queue or exchange name)."""
        return tuple(b for b in self.bindings if b.destination == destination)

    def with_queue(self, queue: Queue, bindings: tuple[Binding, ...] = ()) -> Topology:
        """A copy with ``queue`` (and its bindings) added; used for queues named only on the CLI."""
        queues = dict(self.queues)
        queues[queue.name] = queue
        return Topology(self.exchanges, queues, self.bindings + tuple(bindings), self.routes)


def merge(a: Topology, b: Topology) -> Topology:
    """``a`` and ``b`` together. The same name defined twice must be defined identically
    (origins aside), else :class:`TopologyError` names both places. Duplicate bindings are kept once."""
    issues: list[TopologyIssue] = []
    exchanges = _merge_named(a.exchanges, b.exchanges, "exchanges", issues)
    queues = _merge_named(a.queues, b.queues, "queues", issues)
    if issues:
        raise TopologyError(issues)
    seen: set[Any] = set()
    bindings: list[Binding] = []
    for binding in (*a.bindings, *b.bindings):
        if binding.key not in seen:
            seen.add(binding.key)
            bindings.append(binding)
    routes = list(a.routes)
    routes.extend(r for r in b.routes if r not in a.routes)
    return Topology(exchanges=exchanges, queues=queues, bindings=tuple(bindings), routes=tuple(routes))


def merge_all(parts: Iterable[Topology]) -> Topology:
    """All ``parts`` merged left to right."""
    result = Topology()
    for part in parts:
        result = merge(result, part)
    return result


def _merge_named(left: Any, right: Any, kind: str, issues: list[TopologyIssue]) -> dict[str, Any]:
    merged = dict(left)
    for name, entity in right.items():
        first = merged.get(name)
        if first is None:
            merged[name] = entity
        elif first != entity:
            where = entity.origin or Origin("<unknown>")
            differing = ", ".join(
                f.name for f in fields(first) if f.compare and getattr(first, f.name) != getattr(entity, f.name)
            )
            issues.append(
                TopologyIssue(
                    where.file,
                    where.line,
                    f"{kind}.{name}",
                    f'{kind[:-1]} "{name}" is defined differently here and at {first.origin or "<unknown>"} '
                    f"(differs in: {differing}): make the definitions identical or keep only one",
                )
            )
    return merged
