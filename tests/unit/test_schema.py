"""The editor schema (topology/schema.json) and the loader agree on what is valid.

Every example in topology/ must pass both. Every file in data/invalid/ must fail the loader, with
the expected line and message; the schema must reject it too, except for the files listed as
VALIDATOR_ONLY, whose problem only a check across the whole topology (or of the raw YAML) can see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from amqptasks.core.loader import load_topology
from amqptasks.errors import TopologyError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "topology").glob("*.yaml"))
INVALID = Path(__file__).parent / "data" / "invalid"
VALID = sorted((Path(__file__).parent / "data" / "valid").glob("*.yaml"))

# file -> (line of the loader's first issue, a fragment of its message)
BOTH_REJECT: dict[str, tuple[int, str]] = {
    "unknown_key.yaml": (4, 'unknown key "mesage_ttl" (did you mean "message_ttl"?)'),
    "bad_exchange_type.yaml": (3, 'unknown exchange type "dirct"'),
    "bad_queue_type.yaml": (3, 'unknown queue type "stream"'),
    "bad_overflow.yaml": (4, 'unknown overflow "reject"'),
    "bad_duration.yaml": (3, 'invalid duration "5 minutes"'),
    "negative_max_length.yaml": (3, "max_length must be an integer of 0 or more"),
    "max_priority_range.yaml": (3, "max_priority must be between 1 and 255"),
    "bool_as_int.yaml": (3, "expected a whole number, got the boolean true"),
    "quorum_not_durable.yaml": (4, "quorum queues are always durable"),
    "quorum_max_priority.yaml": (4, "max_priority is not supported by quorum queues"),
    "delivery_limit_classic.yaml": (3, "delivery_limit applies only to quorum queues"),
    "reserved_name.yaml": (2, 'queue name "amq.celery" is reserved'),
    "route_both_targets.yaml": (6, "either queue or exchange"),
    "route_no_target.yaml": (2, "a route needs a target"),
    "binding_without_exchange.yaml": (4, "a binding needs the source exchange"),
    "named_argument.yaml": (4, 'set "message_ttl" instead of arguments.x-message-ttl'),
    "dead_letter_without_exchange.yaml": (3, 'dead_letter needs "exchange"'),
    "top_level_list.yaml": (1, "expected a mapping"),
    "default_exchange_binding.yaml": (4, "cannot be bound to"),
}
# The schema accepts these; only the loader's checks catch them.
VALIDATOR_ONLY: dict[str, tuple[int, str]] = {
    "undeclared_binding_exchange.yaml": (6, 'binding source exchange "taks" is not declared'),  # cross-reference
    "undeclared_dead_letter_exchange.yaml": (3, 'dead-letter exchange "dead" is not declared'),  # cross-reference
    "route_undeclared_queue.yaml": (4, 'route target queue "report" is not declared'),  # cross-reference
    "duplicate_key.yaml": (4, 'duplicate key "max_length"'),  # YAML parsers keep the last value silently
    "dead_letter_default_without_key.yaml": (3, "needs a routing_key naming the dead-letter queue"),  # depends on exchange ""
    "zero_expires.yaml": (3, "expires must be a duration of at least 1ms"),  # "0s" matches the duration pattern
    "headers_bad_x_match.yaml": (7, "x-match must be one of"),  # depends on the source exchange's type
    "long_name.yaml": (2, "queue name is 300 bytes long"),  # the schema counts characters, RabbitMQ bytes
}


@pytest.fixture(scope="module")
def schema() -> Draft202012Validator:
    document = json.loads((ROOT / "topology" / "schema.json").read_text())
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def schema_errors(validator: Draft202012Validator, path: Path) -> list[Any]:
    return list(validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8"))))


def test_every_invalid_file_is_classified() -> None:
    assert sorted(p.name for p in INVALID.glob("*.yaml")) == sorted({**BOTH_REJECT, **VALIDATOR_ONLY})
    assert not set(BOTH_REJECT) & set(VALIDATOR_ONLY)


@pytest.mark.parametrize("path", EXAMPLES + VALID, ids=lambda p: p.name)
def test_examples_pass_schema_and_loader(schema: Draft202012Validator, path: Path) -> None:
    assert [e.message for e in schema_errors(schema, path)] == []
    load_topology(path)


def _loader_rejects(path: Path, line: int, fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    first = info.value.issues[0]
    assert (first.file, first.line) == (str(path), line), str(info.value)
    assert fragment in first.message


@pytest.mark.parametrize(("name", "expected"), sorted(BOTH_REJECT.items()))
def test_schema_and_loader_both_reject(schema: Draft202012Validator, name: str, expected: tuple[int, str]) -> None:
    path = INVALID / name
    assert schema_errors(schema, path), f"the schema accepts {name}"
    _loader_rejects(path, *expected)


@pytest.mark.parametrize(("name", "expected"), sorted(VALIDATOR_ONLY.items()))
def test_only_the_loader_rejects(schema: Draft202012Validator, name: str, expected: tuple[int, str]) -> None:
    path = INVALID / name
    assert schema_errors(schema, path) == [], f"the schema now rejects {name}: move it to BOTH_REJECT"
    _loader_rejects(path, *expected)


def test_the_classic_default_for_old_deployments_loads() -> None:
    topology = load_topology(ROOT / "topology" / "classic" / "default.yaml")
    assert {q.name: q.type for q in topology.queues.values()} == {"celery": "classic", "celery.dead": "classic"}


def test_the_built_in_default_is_the_shipped_example() -> None:
    shipped = (ROOT / "topology" / "default.yaml").read_bytes()
    assert (ROOT / "amqptasks" / "default_topology.yaml").read_bytes() == shipped


def test_the_default_topology_is_what_the_docs_promise() -> None:
    topology = load_topology(ROOT / "amqptasks" / "default_topology.yaml")
    assert {n: e.type for n, e in topology.exchanges.items()} == {"tasks": "direct", "tasks.dead": "direct"}
    celery, dead = topology.queues["celery"], topology.queues["celery.dead"]
    assert (celery.dead_letter_exchange, celery.dead_letter_routing_key) == ("tasks.dead", "celery.dead")
    # Replicated by default, with an explicit delivery limit; the dead-letter queue's limit is never
    # reached by inspections (dlq list returns what it reads) on 3.x or 4.x.
    assert (celery.type, celery.delivery_limit) == ("quorum", 20)
    assert (dead.type, dead.delivery_limit) == ("quorum", 1_000_000)
    assert [(b.source, b.destination, b.routing_key) for b in topology.bindings] == [
        ("tasks", "celery", "celery"), ("tasks.dead", "celery.dead", "celery.dead"),
    ]
