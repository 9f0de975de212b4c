"""Merging the files of one topology: identical definitions collapse, differing ones are issues."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol

from amqptasks.core.topology import Binding, Exchange, Queue, Route, Topology
from amqptasks.errors import TopologyIssue

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class TopologyFile(Protocol):
    """What one file's reader (core/loader.py) found in it."""

    exchanges: list[Exchange]
    queues: list[Queue]
    routes: list[Route]
    bindings: list[tuple[Binding, str]]


def _differing(a: DataclassInstance, b: DataclassInstance) -> str:
    differing = (f.name for f in fields(a) if f.compare and getattr(a, f.name) != getattr(b, f.name))
    return ", ".join(differing)


class FileMerger:
    """Merges files: identical definitions collapse, differing ones are issues naming both places."""

    def __init__(self, issues: list[TopologyIssue]) -> None:
        self.issues = issues
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.routes: dict[str, Route] = {}
        self.bindings: dict[tuple[Any, ...], Binding] = {}
        self.binding_paths: dict[tuple[Any, ...], str] = {}

    def add(self, kind: str, table: dict[str, Any], key: str, entity: Any) -> None:
        first = table.get(key)
        if first is None:
            table[key] = entity
        elif first != entity and first.origin.file != entity.origin.file:
            # Within one file the reader has already reported the duplicate key.
            origin = entity.origin
            self.issues.append(TopologyIssue(
                origin.file, origin.line, f"{kind}s.{key}",
                f'{kind} "{key}" is defined differently here and at {first.origin} '
                f"(differs in: {_differing(first, entity)}): make the definitions identical or keep only one"))

    def add_file(self, reader: TopologyFile) -> None:
        for exchange in reader.exchanges:
            self.add("exchange", self.exchanges, exchange.name, exchange)
        for queue in reader.queues:
            self.add("queue", self.queues, queue.name, queue)
        for route in reader.routes:
            self.add("route", self.routes, route.pattern, route)
        for binding, path in reader.bindings:
            # Bindings from several files add up: they are separate broker entities.
            self.bindings.setdefault(binding.key, binding)
            self.binding_paths.setdefault(binding.key, path)

    def topology(self) -> Topology:
        return Topology(self.exchanges, self.queues, tuple(self.bindings.values()), tuple(self.routes.values()))
