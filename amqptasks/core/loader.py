"""Topology YAML files -> :class:`Topology`, with every problem reported at its file and line.

PyYAML is used safely: ``yaml.compose`` with the SafeLoader yields nodes that keep their line
numbers, and scalars are resolved by the SafeLoader's own constructor, so values mean exactly what
``yaml.safe_load`` would make of them. Walking the nodes ourselves lets us reject duplicate keys,
which ``safe_load`` silently collapses to the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from amqptasks.core.durations import parse_duration
from amqptasks.core.merge import FileMerger
from amqptasks.core.topology import Binding, Exchange, Origin, Queue, Route, Topology
from amqptasks.core.validate import SourceMap, describe, is_int, suggest, validate
from amqptasks.errors import TopologyError, TopologyIssue

TOP_KEYS = ("exchanges", "queues", "routes")
BINDING_KEYS = ("exchange", "routing_key", "arguments")
DEAD_LETTER_KEYS = ("exchange", "routing_key")
ROUTE_KEYS = ("queue", "exchange", "routing_key")
# yaml key -> (model attribute, kind of value)
_EXCHANGE_FIELDS = {"type": ("type", "str")} | {key: (key, "bool") for key in ("durable", "auto_delete", "internal")}
_QUEUE_FIELDS = {
    "type": ("type", "str"), "durable": ("durable", "bool"), "auto_delete": ("auto_delete", "bool"),
    "exclusive": ("exclusive", "bool"), "max_priority": ("max_priority", "int"),
    "message_ttl": ("message_ttl_ms", "duration"), "max_length": ("max_length", "int"),
    "max_length_bytes": ("max_length_bytes", "int"), "overflow": ("overflow", "str"),
    "expires": ("expires_ms", "duration"), "delivery_limit": ("delivery_limit", "int"),
}
EXCHANGE_KEYS = (*_EXCHANGE_FIELDS, "arguments", "bindings")
QUEUE_KEYS = (*_QUEUE_FIELDS, "dead_letter", "arguments", "bindings")
# x-arguments that have a named key: writing them under `arguments` would bypass the checks on
# the named key (durations, quorum rules) and the planner's advice, which speaks of named keys.
NAMED_ARGUMENTS = {
    "x-queue-type": "type", "x-max-priority": "max_priority", "x-message-ttl": "message_ttl",
    "x-max-length": "max_length", "x-max-length-bytes": "max_length_bytes", "x-overflow": "overflow",
    "x-expires": "expires", "x-delivery-limit": "delivery_limit",
    "x-dead-letter-exchange": "dead_letter.exchange", "x-dead-letter-routing-key": "dead_letter.routing_key",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MISSING = object()
_BAD = object()  # a value whose problem is already reported
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _FileReader:
    """Reads one file's node tree into entities, collecting issues instead of stopping."""

    def __init__(self, filename: str, issues: list[TopologyIssue], origins: dict[str, Origin]) -> None:
        self.file = filename
        self.issues = issues
        self.origins = origins
        self.constructor = yaml.SafeLoader("")
        self.reported: set[int] = set()
        self.exchanges: list[Exchange] = []
        self.queues: list[Queue] = []
        self.bindings: list[tuple[Binding, str]] = []
        self.routes: list[Route] = []

    # --- primitives -------------------------------------------------------------------------

    def issue(self, node: Node | None, path: str, message: str) -> None:
        self.issues.append(TopologyIssue(self.file, _line(node) if node is not None else None, path, message))

    def here(self, node: Node) -> Origin:
        return Origin(self.file, _line(node))

    def scalar(self, node: Node, path: str = "") -> Any:
        """A scalar resolved as ``yaml.safe_load`` would; ``_BAD`` (reported) for unsafe tags."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            if id(node) not in self.reported:
                self.reported.add(id(node))
                self.issue(node, path,
                           f"unsupported YAML tag {node.tag} (only plain values are allowed): {exc.problem}")
            return _BAD

    def tag_ok(self, node: Node, path: str) -> bool:
        """False (reported) for a list or mapping with a tag such as ``!!python/object``: never
        constructed, but a sign the file is not what it seems."""
        if isinstance(node, ScalarNode) or node.tag in _PLAIN_COLLECTION_TAGS:
            return True
        if id(node) not in self.reported:
            self.reported.add(id(node))
            self.issue(node, path, f"unsupported YAML tag {node.tag} (only plain values are allowed)")
        return False

    def plain(self, node: Node, path: str) -> Any:
        """Any node as plain Python (for ``arguments`` values), still rejecting duplicate keys."""
        if not self.tag_ok(node, path):
            return None
        if isinstance(node, MappingNode):
            return {key: self.plain(value, f"{path}.{key}") for key, _, value in self.items(node, path)}
        if isinstance(node, SequenceNode):
            return [self.plain(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        value = self.scalar(node, path)
        return None if value is _BAD else value

    def items(self, node: MappingNode, path: str) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) of a mapping, in order; duplicate and non-string keys are
        issues. Duplicates are all returned, so each is still checked; merged-in keys (``<<``)
        that the mapping overrides are left out."""
        own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        merged: dict[str, tuple[Node, Node]] = {}
        if len(own) != len(node.value):
            try:
                self.constructor.flatten_mapping(node)  # YAML merge keys (<<: *defaults)
            except yaml.MarkedYAMLError as exc:
                self.issue(node, path, f"invalid merge key: {exc.problem}")
            own_ids = {id(k) for k, _ in own}
            for key_node, value_node in node.value:
                key = self.scalar(key_node) if isinstance(key_node, ScalarNode) else _MISSING
                if id(key_node) not in own_ids and isinstance(key, str):
                    merged[key] = (key_node, value_node)
        seen: dict[str, Node] = {}
        result: list[tuple[str, Node, Node]] = []
        for key_node, value_node in own:
            key = self.scalar(key_node, path) if isinstance(key_node, ScalarNode) else _MISSING
            if key is _BAD:
                continue
            if not isinstance(key, str):
                shown = "a complex key" if key is _MISSING else describe(key)
                self.issue(key_node, path, f"keys must be strings, got {shown}: quote it")
                continue
            if key in seen:
                self.issue(key_node, _join(path, key),
                           f'duplicate key "{key}" (first at line {_line(seen[key])}); YAML would keep only the '
                           "last one: remove or merge them")
            seen.setdefault(key, key_node)
            result.append((key, key_node, value_node))
        inherited = [(key, k, v) for key, (k, v) in merged.items() if key not in seen]
        return inherited + result

    def mapping(self, node: Node, path: str, *, allow_null: bool = False) -> MappingNode | None:
        if not self.tag_ok(node, path):
            return None
        if isinstance(node, MappingNode):
            return node
        if allow_null and isinstance(node, ScalarNode) and self.scalar(node) is None:
            return MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        self.issue(node, path, f"expected a mapping (key: value lines), got {self._kind(node)}")
        return None

    def _kind(self, node: Node) -> str:
        if isinstance(node, SequenceNode):
            return "a list"
        return "a mapping" if isinstance(node, MappingNode) else describe(self.plain(node, ""))

    def known_keys(self, node: MappingNode, path: str, allowed: Sequence[str]) -> dict[str, tuple[Node, Node]]:
        """The mapping's entries whose keys are in ``allowed``; others are reported with a hint."""
        found: dict[str, tuple[Node, Node]] = {}
        for key, key_node, value_node in self.items(node, path):
            if key in allowed:
                found[key] = (key_node, value_node)
                continue
            hint = suggest(key, allowed)
            named = NAMED_ARGUMENTS.get(key)
            if named and not hint:
                hint = f' (did you mean "{named}"?)'
            self.issue(key_node, _join(path, key),
                       f'unknown key "{key}"{hint}; allowed keys: {", ".join(allowed)}')
        return found

    def value(self, node: Node, path: str, kind: str) -> Any:
        """A scalar of ``kind`` (str, bool, int, duration); ``_MISSING`` after an issue."""
        self.origins.setdefault(path, self.here(node))
        raw = self.scalar(node, path) if isinstance(node, ScalarNode) else _MISSING
        if raw is _BAD or not self.tag_ok(node, path):
            return _MISSING
        shown = self._kind(node) if raw is _MISSING else describe(raw)
        if kind == "duration" and raw is not _MISSING:
            try:
                return parse_duration(raw)
            except ValueError as exc:
                self.issue(node, path, str(exc))
                return _MISSING
        if kind == "bool" and isinstance(raw, bool):
            return raw
        if kind == "int" and is_int(raw):
            return raw
        if kind == "str" and isinstance(raw, str):
            return raw
        want = {"bool": "true or false", "int": "a whole number", "str": "a string", "duration": "a duration"}[kind]
        fix = ": quote it" if kind == "str" and isinstance(raw, int | float | bool) else ""
        self.issue(node, path, f"expected {want}, got {shown}{fix}")
        return _MISSING

    def arguments(self, node: Node, path: str, *, named_forbidden: bool) -> dict[str, Any] | None:
        mapping = self.mapping(node, path, allow_null=True)
        if mapping is None:
            return None
        self.origins.setdefault(path, self.here(node))
        result: dict[str, Any] = {}
        for key, key_node, value_node in self.items(mapping, path):
            if named_forbidden and key in NAMED_ARGUMENTS:
                self.issue(key_node, f"{path}.{key}",
                           f'set "{NAMED_ARGUMENTS[key]}" instead of arguments.{key}, so it is checked and planned')
                continue
            result[key] = self.plain(value_node, f"{path}.{key}")
        return result

    # --- sections ---------------------------------------------------------------------------

    def document(self, root: Node | None) -> None:
        if root is None:  # empty file or only comments: an empty topology
            return
        top = self.mapping(root, "", allow_null=True)
        if top is None:
            return
        sections = self.known_keys(top, "", TOP_KEYS)
        readers: dict[str, Callable[[str, Node, Node], None]] = {
            "exchanges": partial(self.entity, "exchange"), "queues": partial(self.entity, "queue"), "routes": self.route,
        }
        for section, (_, section_node) in sections.items():
            body = self.mapping(section_node, section, allow_null=True)
            if body is None:
                continue
            for name, key_node, spec in self.items(body, section):
                readers[section](name, key_node, spec)

    def fields(self, entries: dict[str, tuple[Node, Node]], path: str,
               table: dict[str, tuple[str, str]]) -> dict[str, Any]:
        """Model keyword arguments from ``entries`` per ``table`` (yaml key -> (attribute, kind));
        values with issues are left out, so the model's default stands in for them."""
        kwargs: dict[str, Any] = {}
        for key, (attr, kind) in table.items():
            if key in entries:
                value = self.value(entries[key][1], f"{path}.{key}", kind)
                if value is not _MISSING:
                    kwargs[attr] = value
        return kwargs

    def entity(self, kind: str, name: str, key_node: Node, spec_node: Node) -> None:
        path = f"{kind}s.{name}"
        self.origins.setdefault(path, self.here(key_node))
        spec = self.mapping(spec_node, path, allow_null=True)
        allowed = EXCHANGE_KEYS if kind == "exchange" else QUEUE_KEYS
        entries = self.known_keys(spec, path, allowed) if spec is not None else {}
        kwargs = self.fields(entries, path, _EXCHANGE_FIELDS if kind == "exchange" else _QUEUE_FIELDS)
        if "dead_letter" in entries:
            kwargs.update(self.dead_letter(entries["dead_letter"][1], f"{path}.dead_letter"))
        if "arguments" in entries:
            args = self.arguments(entries["arguments"][1], f"{path}.arguments", named_forbidden=kind == "queue")
            if args is not None:
                kwargs["arguments"] = args
        # Registered even when broken, so references to it add no noise.
        if kind == "exchange":
            self.exchanges.append(Exchange(name=name, origin=self.here(key_node), **kwargs))
        else:
            self.queues.append(Queue(name=name, origin=self.here(key_node), **kwargs))
        if "bindings" in entries:
            self.binding_list(entries["bindings"][1], path, name, kind)

    def dead_letter(self, node: Node, path: str) -> dict[str, str]:
        spec = self.mapping(node, path)
        if spec is None:
            return {}
        self.origins.setdefault(path, self.here(node))
        entries = self.known_keys(spec, path, DEAD_LETTER_KEYS)
        if "exchange" not in entries:
            self.issue(node, f"{path}.exchange",
                       'dead_letter needs "exchange" (a declared exchange, or "" for the default exchange)')
            return {}
        return self.fields(entries, path, {"exchange": ("dead_letter_exchange", "str"),
                                           "routing_key": ("dead_letter_routing_key", "str")})

    def binding_list(self, node: Node, owner_path: str, destination: str, dest_type: str) -> None:
        path = f"{owner_path}.bindings"
        if (isinstance(node, ScalarNode) and self.scalar(node) is None) or not self.tag_ok(node, path):
            return
        if not isinstance(node, SequenceNode):
            self.issue(node, path, f"expected a list of bindings (- exchange: ...), got {self._kind(node)}")
            return
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            spec = self.mapping(item, item_path)
            if spec is None:
                continue
            self.origins.setdefault(item_path, self.here(item))
            entries = self.known_keys(spec, item_path, BINDING_KEYS)
            if "exchange" not in entries:
                self.issue(item, f"{item_path}.exchange", "a binding needs the source exchange: exchange: <name>")
                continue
            source = self.value(entries["exchange"][1], f"{item_path}.exchange", "str")
            key = self.value(entries["routing_key"][1], f"{item_path}.routing_key", "str") \
                if "routing_key" in entries else ""
            args = self.arguments(entries["arguments"][1], f"{item_path}.arguments", named_forbidden=False) \
                if "arguments" in entries else {}
            if source is _MISSING or key is _MISSING or args is None:
                continue
            binding = Binding(source, destination, dest_type, key, args, origin=self.here(item))  # type: ignore[arg-type]
            self.bindings.append((binding, item_path))

    def route(self, pattern: str, key_node: Node, spec_node: Node) -> None:
        path = f"routes.{pattern}"
        self.origins.setdefault(path, self.here(key_node))
        spec = self.mapping(spec_node, path)
        if spec is None:
            return
        entries = self.known_keys(spec, path, ROUTE_KEYS)
        kwargs = self.fields(entries, path, {key: (key, "str") for key in ROUTE_KEYS})
        if "exchange" in kwargs and "routing_key" not in kwargs and "queue" not in kwargs:
            kwargs["routing_key"] = ""
        self.routes.append(Route(pattern=pattern, origin=self.here(key_node), **kwargs))


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    result: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():  # a directory means every YAML file in it, in name order
            result.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            result.append(path)
    return result


def load_documents(documents: Sequence[tuple[str, str]]) -> Topology:
    """Merge ``(filename, text)`` documents into one validated Topology.

    Raises :class:`TopologyError` with every issue of every document (syntax, structure,
    conflicting duplicates, validation), sorted by file and line.
    """
    issues: list[TopologyIssue] = []
    origins: dict[str, Origin] = {}
    merger = FileMerger(issues)
    parse_failed = False
    for filename, text in documents:
        reader = _FileReader(filename, issues, origins)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
            problem = " ".join(part for part in parts if part) or str(exc)
            line = mark.line + 1 if mark else None
            issues.append(TopologyIssue(filename, line, "", f"YAML syntax error: {problem}"))
            parse_failed = True
            continue
        reader.document(root)
        merger.add_file(reader)
    topology = merger.topology()
    issues.extend(validate(topology, SourceMap(origins, merger.binding_paths), references=not parse_failed))
    if issues:
        order = {name: index for index, (name, _) in enumerate(documents)}
        issues.sort(key=lambda i: (order.get(i.file, len(order)), i.line or 0))
        raise TopologyError(issues)
    return topology


def load_topology_text(text: str, filename: str = "<string>") -> Topology:
    """Load a topology from YAML ``text``; ``filename`` is used in error messages."""
    return load_documents([(filename, text)])


def load_topology(paths: str | Path | Sequence[str | Path]) -> Topology:
    """Load, merge and validate topology files (a directory stands for its ``*.yaml`` files).

    Raises :class:`TopologyError` listing every problem in every file, each with file:line.
    """
    documents: list[tuple[str, str]] = []
    missing: list[TopologyIssue] = []
    for path in _expand(paths):
        try:
            documents.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            missing.append(TopologyIssue(str(path), None, "", f"cannot read the file: {exc}"))
    try:
        topology = load_documents(documents)
    except TopologyError as exc:
        raise TopologyError(missing + exc.issues) from None
    if missing:
        raise TopologyError(missing)
    return topology
