"""Types shared by the planner (pure) and the adapters that observe and change a broker.

The adapters describe what they saw on the broker as :class:`ObservedState`; the planner compares
it with a :class:`~amqptasks.core.topology.Topology` and returns a :class:`Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from amqptasks.core.topology import Binding, Exchange, Queue

EntityKind = Literal["exchange", "queue", "binding"]
Status = Literal["create", "unchanged", "conflict", "unknown"]


@dataclass(frozen=True)
class ObservedExchange:
    """An exchange as the broker reports it."""

    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ObservedQueue:
    """A queue as the broker reports it (``arguments`` are the ``x-*`` declare arguments)."""

    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ObservedState:
    """What exists on the broker.

    ``None`` for a map means "not known" (no management API): the planner then reports entities as
    ``unknown`` and the adapter settles them with a declare probe.
    ``bindings`` holds :attr:`Binding.key` tuples.
    """

    exchanges: Mapping[str, ObservedExchange] | None
    queues: Mapping[str, ObservedQueue] | None
    bindings: frozenset[tuple[Any, ...]] | None


@dataclass(frozen=True)
class Difference:
    """One differing setting: the declare field or ``x-*`` argument, expected vs actual."""

    field: str
    expected: Any
    actual: Any


@dataclass(frozen=True)
class EntityPlan:
    """The verdict for one entity, and for a conflict the differences and the way out."""

    kind: EntityKind
    name: str
    status: Status
    entity: Exchange | Queue | Binding
    differences: tuple[Difference, ...] = ()
    advice: str = ""


@dataclass(frozen=True)
class Plan:
    """Every entity's verdict, in declare order: exchanges, then queues, then bindings."""

    entities: tuple[EntityPlan, ...] = field(default_factory=tuple)

    @property
    def conflicts(self) -> tuple[EntityPlan, ...]:
        return tuple(e for e in self.entities if e.status == "conflict")

    @property
    def to_create(self) -> tuple[EntityPlan, ...]:
        return tuple(e for e in self.entities if e.status in ("create", "unknown"))

    @property
    def is_noop(self) -> bool:
        return all(e.status == "unchanged" for e in self.entities)
