"""Semantic rules, each with its message and line: through YAML files (exact lines) and through
topologies built in code (where the entity's origin is the only location)."""

from __future__ import annotations

import pytest

from amqptasks.core.loader import load_topology_text
from amqptasks.core.topology import Binding, Exchange, Origin, Queue, Route, Topology
from amqptasks.core.validate import BUILTIN_EXCHANGES, validate
from amqptasks.errors import TopologyError, TopologyIssue


def yaml_issues(text: str) -> list[TopologyIssue]:
    try:
        load_topology_text(text, "t.yaml")
    except TopologyError as exc:
        return exc.issues
    return []


def only(text: str) -> tuple[int | None, str, str]:
    issues = yaml_issues(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0].line, issues[0].path, issues[0].message


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["exchanges", "queues"])
def test_amq_prefixed_names_are_reserved(section: str) -> None:
    line, path, message = only(f"{section}:\n  ok: {{}}\n  amq.mine: {{}}\n")
    assert (line, path) == (3, f"{section}.amq.mine")
    assert 'name "amq.mine" is reserved' in message and "rename it" in message


def test_empty_names() -> None:
    issues = yaml_issues("exchanges:\n  '': {}\nqueues:\n  '': {}\n")
    assert [(i.line, i.message) for i in issues] == [
        (2, 'empty exchange name: the default exchange "" always exists: remove this entry'),
        (4, "empty queue name: give the queue a name (server-named queues cannot be declared from a file)"),
    ]


def test_names_are_limited_to_255_utf8_bytes() -> None:
    assert yaml_issues("queues:\n  " + "a" * 255 + ": {}\n") == []
    line, _, message = only("queues:\n  " + "é" * 128 + ": {}\n")
    assert line == 2
    assert message == "queue name is 256 bytes long; RabbitMQ allows at most 255 (UTF-8): shorten it"


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key", "message"),
    [
        ("type: dirct", "type", 'unknown exchange type "dirct" (did you mean "direct"?): use one of direct, topic, fanout, headers'),
        ("type: x-delayed-message", "type", 'unknown exchange type "x-delayed-message"'),
    ],
)
def test_exchange_values(snippet: str, key: str, message: str) -> None:
    line, path, text = only(f"exchanges:\n  e:\n    durable: true\n    {snippet}\n")
    assert (line, path) == (4, f"exchanges.e.{key}")
    assert message in text


@pytest.mark.parametrize(
    ("snippet", "key", "message"),
    [
        ("type: qorum", "type", 'unknown queue type "qorum" (did you mean "quorum"?): use classic or quorum'),
        ("max_priority: 0", "max_priority", "max_priority must be between 1 and 255"),
        ("max_priority: 256", "max_priority", "got the integer 256"),
        ("max_length: -1", "max_length", "max_length must be an integer of 0 or more, got the integer -1"),
        ("max_length_bytes: -5", "max_length_bytes", "max_length_bytes must be an integer of 0 or more"),
        ("expires: 0", "expires", "expires must be a duration of at least 1ms"),
        ("overflow: drop-tail", "overflow", 'unknown overflow "drop-tail" (did you mean "drop-head"?)'),
        ("delivery_limit: 3", "delivery_limit", "delivery_limit applies only to quorum queues: set type: quorum"),
    ],
)
def test_queue_values(snippet: str, key: str, message: str) -> None:
    line, path, text = only(f"queues:\n  q:\n    durable: true\n    {snippet}\n")
    assert (line, path) == (4, f"queues.q.{key}")
    assert message in text


def test_boundary_values_are_accepted() -> None:
    text = (
        "queues:\n"
        "  a: {max_priority: 1, max_length: 0, max_length_bytes: 0, message_ttl: 0, expires: 1}\n"
        "  b: {max_priority: 255, overflow: reject-publish-dlx}\n"
        "  c: {type: quorum, delivery_limit: -1, overflow: drop-head}\n"
        "  d: {type: quorum, delivery_limit: 0}\n"
    )
    assert yaml_issues(text) == []


def test_delivery_limit_below_minus_one_is_rejected() -> None:
    _, _, message = only("queues:\n  q: {type: quorum, delivery_limit: -2}\n")
    assert "or -1 for no limit" in message


# --- quorum ----------------------------------------------------------------------------------


def test_quorum_rules_each_point_at_their_key() -> None:
    issues = yaml_issues(
        "queues:\n"
        "  q:\n"
        "    type: quorum\n"
        "    durable: false\n"
        "    exclusive: true\n"
        "    auto_delete: true\n"
        "    max_priority: 5\n"
        "    overflow: reject-publish-dlx\n"
    )
    assert [(i.line, i.path.rsplit(".", 1)[1]) for i in issues] == [
        (4, "durable"), (5, "exclusive"), (6, "auto_delete"), (7, "max_priority"), (8, "overflow")
    ]
    assert issues[0].message == "quorum queues are always durable: remove durable: false"
    assert "use type: classic" in issues[3].message


# --- references ------------------------------------------------------------------------------


def test_binding_sources_must_be_declared_or_built_in() -> None:
    sources = sorted(BUILTIN_EXCHANGES)
    bindings = "".join(f"      - {{exchange: {s}, routing_key: q}}\n" for s in sources)
    assert yaml_issues(f"queues:\n  q:\n    bindings:\n{bindings}") == []
    line, path, message = only(
        "exchanges:\n  tasks: {}\nqueues:\n  q:\n    bindings:\n      - {exchange: tasks}\n      - {exchange: taks}\n"
    )
    assert (line, path) == (7, "queues.q.bindings[1].exchange")
    assert message == ('binding source exchange "taks" is not declared (did you mean "tasks"?): '
                       "declare it under exchanges: or fix the name")


def test_exchange_to_exchange_binding_source_must_be_declared() -> None:
    line, path, message = only("exchanges:\n  audit:\n    type: fanout\n    bindings:\n      - exchange: events\n")
    assert (line, path) == (5, "exchanges.audit.bindings[0].exchange")
    assert 'source exchange "events" is not declared' in message


def test_the_default_exchange_cannot_be_bound_to() -> None:
    line, path, message = only("queues:\n  q:\n    bindings: [{exchange: '', routing_key: q}]\n")
    assert (line, path) == (3, "queues.q.bindings[0].exchange")
    assert "cannot be bound to" in message and "bind to a declared exchange instead" in message


def test_dead_letter_exchange_must_be_declared_or_built_in_or_default() -> None:
    ok = (
        "queues:\n"
        "  a: {dead_letter: {exchange: amq.direct, routing_key: x}}\n"
        "  b: {dead_letter: {exchange: '', routing_key: a}}\n"
    )
    assert yaml_issues(ok) == []
    line, path, message = only("exchanges:\n  dead: {}\nqueues:\n  q:\n    dead_letter: {exchange: deed}\n")
    assert (line, path) == (5, "queues.q.dead_letter.exchange")
    assert message == 'dead-letter exchange "deed" is not declared (did you mean "dead"?): declare it under exchanges:'


def test_dead_lettering_through_the_default_exchange_needs_a_declared_queue() -> None:
    line, path, message = only("queues:\n  q:\n    dead_letter:\n      exchange: ''\n      routing_key: q.ded\n  q.dead: {}\n")
    assert (line, path) == (5, "queues.q.dead_letter.routing_key")
    assert 'dead-letter queue "q.ded" is not declared (did you mean "q.dead"?)' in message
    line, path, message = only("queues:\n  q:\n    dead_letter: {exchange: ''}\n")
    assert (line, path) == (3, "queues.q.dead_letter")
    assert "needs a routing_key naming the dead-letter queue" in message


def test_headers_bindings_check_x_match() -> None:
    base = "exchanges:\n  h: {type: headers}\nqueues:\n  q:\n    bindings:\n      - exchange: h\n        arguments: {x-match: %s}\n"
    assert yaml_issues(base % "any") == []
    line, path, message = only(base % "some")
    assert (line, path) == (7, "queues.q.bindings[0].arguments")
    assert message.startswith("x-match must be one of all, any, all-with-x, any-with-x")


# --- routes ----------------------------------------------------------------------------------

ROUTE_BASE = "exchanges:\n  events: {type: topic}\n  hidden: {internal: true}\nqueues:\n  reports: {}\nroutes:\n"


@pytest.mark.parametrize(
    ("route", "path", "message"),
    [
        ("'r': {queue: report}", "routes.r.queue", 'route target queue "report" is not declared (did you mean "reports"?)'),
        ("'r': {exchange: evnts}", "routes.r.exchange", 'route target exchange "evnts" is not declared (did you mean "events"?)'),
        ("'r': {queue: reports, exchange: events}", "routes.r", "either queue or exchange (+ routing_key), not both"),
        ("'r': {routing_key: x}", "routes.r", "a route needs a target"),
        ("'r': {queue: reports, routing_key: x}", "routes.r.routing_key", "routing_key applies only with exchange"),
        ("'r': {exchange: '', routing_key: reports}", "routes.r.exchange", "write queue: reports instead"),
        ("'r': {exchange: hidden}", "routes.r.exchange", 'exchange "hidden" is internal'),
        ("' ': {queue: reports}", "routes. ", "a route needs a task name pattern"),
    ],
)
def test_route_rules(route: str, path: str, message: str) -> None:
    line, found_path, text = only(ROUTE_BASE + "  " + route + "\n")
    assert line == 7
    assert found_path == path
    assert message in text


def test_routes_to_built_in_exchanges_are_allowed() -> None:
    assert yaml_issues(ROUTE_BASE + "  'x.*': {exchange: amq.topic, routing_key: x}\n") == []


# --- topologies built in code ----------------------------------------------------------------


def test_topologies_built_in_code_are_checked_at_their_origin() -> None:
    here = Origin("app.py", 10)
    topology = Topology(
        exchanges={"e": Exchange("e", type="fanout", durable="yes", arguments={1: "x"}, origin=here)},  # type: ignore[arg-type,dict-item]
        queues={"q": Queue("q", max_length=True, message_ttl_ms=1.5, dead_letter_routing_key="k", origin=here)},  # type: ignore[arg-type]
        bindings=(
            Binding("e", "missing"),
            Binding("e", "q", "topic", origin=here),  # type: ignore[arg-type]
            Binding("e", "q", routing_key=5),  # type: ignore[arg-type]
            Binding("e", "nowhere", "exchange"),
        ),
        routes=(Route("x", queue="q"),),
    )
    found = [(i.file, i.line, i.path, i.message) for i in validate(topology)]
    assert found == [
        ("app.py", 10, "exchanges.e.durable", 'durable must be true or false, got the string "yes"'),
        ("app.py", 10, "exchanges.e.arguments", "argument names must be non-empty strings, got the integer 1: quote it"),
        ("app.py", 10, "queues.q.message_ttl", "message_ttl must be a duration of 0 or more, got the number 1.5"),
        ("app.py", 10, "queues.q.max_length", "max_length must be an integer of 0 or more, got the boolean true"),
        ("app.py", 10, "queues.q.dead_letter.routing_key",
         'dead_letter.routing_key needs dead_letter.exchange (use "" for the default exchange)'),
        ("<topology>", None, "queues.missing.bindings", 'binding destination queue "missing" is not declared'),
        ("app.py", 10, "queues.q.bindings", 'destination_type must be "queue" or "exchange", got the string "topic"'),
        ("<topology>", None, "queues.q.bindings.routing_key", "routing_key must be a string, got the integer 5: quote it"),
        ("<topology>", None, "exchanges.nowhere.bindings", 'binding destination exchange "nowhere" is not declared'),
    ]


def test_a_valid_topology_has_no_issues() -> None:
    topology = Topology(
        exchanges={"tasks": Exchange("tasks")},
        queues={"celery": Queue("celery", type="quorum", delivery_limit=5)},
        bindings=(Binding("tasks", "celery", routing_key="celery"),),
        routes=(Route("*", queue="celery"),),
    )
    assert validate(topology) == []


def test_references_can_be_skipped() -> None:
    topology = Topology(queues={"q": Queue("q", dead_letter_exchange="nope")}, bindings=(Binding("nope", "q"),))
    assert len(validate(topology)) == 2
    assert validate(topology, references=False) == []
