"""YAML -> Topology: the contract, file:line of every error, all errors at once, merging files."""

from __future__ import annotations

from pathlib import Path

import pytest

from amqptasks.core.loader import load_documents, load_topology, load_topology_text
from amqptasks.core.topology import Binding, Origin, Route, Topology
from amqptasks.errors import TopologyError, TopologyIssue

DATA = Path(__file__).parent / "data"


def issues_of(text: str, filename: str = "t.yaml") -> list[TopologyIssue]:
    with pytest.raises(TopologyError) as info:
        load_topology_text(text, filename)
    return info.value.issues


def one_issue(text: str) -> TopologyIssue:
    issues = issues_of(text)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def test_the_contract_example_loads_into_the_model() -> None:
    path = DATA / "valid" / "contract.yaml"
    topology = load_topology(path)
    assert list(topology.exchanges) == ["tasks", "events", "dead", "audit"]
    assert topology.exchanges["events"].type == "topic"
    assert topology.exchanges["tasks"].origin == Origin(str(path), 3)
    celery = topology.queues["celery"]
    assert celery.origin == Origin(str(path), 8)
    assert (celery.type, celery.durable, celery.max_priority) == ("classic", True, 10)
    assert celery.message_ttl_ms == 3_600_000
    assert celery.expires_ms == 7 * 86_400_000
    assert (celery.max_length, celery.max_length_bytes, celery.overflow) == (100_000, 104_857_600, "reject-publish")
    assert (celery.dead_letter_exchange, celery.dead_letter_routing_key) == ("dead", "celery.dead")
    assert dict(celery.arguments) == {"x-custom": 1}
    assert topology.bindings == (
        Binding("events", "audit", "exchange", "audit.#"),
        Binding("tasks", "celery", "queue", "celery"),
        Binding("events", "celery", "queue", "task.*.created"),
        Binding("dead", "celery.dead", "queue", "celery.dead"),
    )
    assert [b.origin.line for b in topology.bindings if b.origin] == [6, 20, 21, 23]
    assert topology.routes == (
        Route("emails.*", exchange="events", routing_key="email.send"),
        Route("reports.build", queue="reports"),
    )
    assert topology.queues["celery.dead"].max_priority is None


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n"])
def test_an_empty_file_is_an_empty_topology(text: str) -> None:
    assert load_topology_text(text) == Topology()


def test_null_sections_and_entities_take_defaults() -> None:
    topology = load_topology_text("exchanges:\nqueues:\n  celery:\n  other: {}\nroutes:\n")
    assert topology.queues["celery"].durable is True
    assert list(topology.queues) == ["celery", "other"]


def test_route_to_an_exchange_defaults_the_routing_key_to_empty() -> None:
    topology = load_topology_text("exchanges:\n  fan: {type: fanout}\nroutes:\n  'a.*': {exchange: fan}\n")
    assert topology.routes[0].routing_key == ""


def test_yaml_syntax_error_has_file_and_line() -> None:
    issue = one_issue("queues:\n  celery:\n    bindings: [{exchange: tasks\n    durable: true\n")
    assert issue.file == "t.yaml"
    assert issue.line == 4
    assert issue.message.startswith("YAML syntax error:")


def test_tab_indentation_is_a_syntax_error_with_its_line() -> None:
    issue = one_issue("queues:\n  celery:\n\tdurable: true\n")
    assert (issue.line, issue.message.startswith("YAML syntax error")) == (3, True)


def test_duplicate_keys_are_errors_at_the_second_key() -> None:
    issues = issues_of("queues:\n  celery:\n    max_length: 10\n    max_length: 20\n  celery:\n    durable: true\n")
    assert [(i.line, i.path) for i in issues] == [(4, "queues.celery.max_length"), (5, "queues.celery")]
    assert 'duplicate key "max_length" (first at line 3)' in issues[0].message
    assert "(first at line 2)" in issues[1].message


def test_unknown_keys_suggest_the_closest_known_key() -> None:
    issue = one_issue("queues:\n  celery:\n    durable: true\n    dead_leter: {exchange: x}\n")
    assert (issue.line, issue.path) == (4, "queues.celery.dead_leter")
    assert 'unknown key "dead_leter" (did you mean "dead_letter"?)' in issue.message


def test_unknown_key_spelled_as_an_x_argument_points_at_the_named_key() -> None:
    issue = one_issue("queues:\n  celery:\n    x-message-ttl: 5\n")
    assert 'did you mean "message_ttl"?' in issue.message


def test_unknown_top_level_and_binding_keys() -> None:
    issues = issues_of("exchange:\n  tasks: {}\nqueues:\n  q:\n    bindings:\n      - {exchange: amq.direct, key: q}\n")
    assert [(i.line, i.path) for i in issues] == [(1, "exchange"), (6, "queues.q.bindings[0].key")]
    assert 'did you mean "exchanges"?' in issues[0].message
    assert "allowed keys: exchange, routing_key, arguments" in issues[1].message


@pytest.mark.parametrize(
    ("snippet", "path", "message"),
    [
        ("durable: 'yes'", "queues.q.durable", 'expected true or false, got the string "yes"'),
        ("durable: 1", "queues.q.durable", "expected true or false, got the integer 1"),
        ("max_length: true", "queues.q.max_length", "expected a whole number, got the boolean true"),
        ("max_length: '10'", "queues.q.max_length", 'expected a whole number, got the string "10"'),
        ("max_length: 1.5", "queues.q.max_length", "expected a whole number, got the number 1.5"),
        ("max_priority: [1]", "queues.q.max_priority", "expected a whole number, got a list"),
        ("type: 1", "queues.q.type", "expected a string, got the integer 1: quote it"),
        ("message_ttl: 5x", "queues.q.message_ttl", 'invalid duration "5x"'),
        ("message_ttl: yes", "queues.q.message_ttl", "got the boolean true"),
        ("expires: -5", "queues.q.expires", "must not be negative"),
        ("dead_letter: dead", "queues.q.dead_letter", 'expected a mapping (key: value lines), got the string "dead"'),
        ("bindings: {exchange: x}", "queues.q.bindings", "expected a list of bindings"),
        ("bindings: [amq.direct]", "queues.q.bindings[0]", "expected a mapping"),
        ("arguments: [1]", "queues.q.arguments", "expected a mapping"),
    ],
)
def test_wrong_value_types_point_at_the_value(snippet: str, path: str, message: str) -> None:
    issue = one_issue(f"queues:\n  q:\n    {snippet}\n")
    assert (issue.line, issue.path) == (3, path)
    assert message in issue.message


def test_binding_routing_key_must_be_a_string() -> None:
    issue = one_issue("queues:\n  q:\n    bindings:\n      - exchange: amq.direct\n        routing_key: 5\n")
    assert (issue.line, issue.path) == (5, "queues.q.bindings[0].routing_key")
    assert "quote it" in issue.message


def test_non_string_names_must_be_quoted() -> None:
    issue = one_issue("queues:\n  123: {}\n")
    assert (issue.line, issue.path) == (2, "queues")
    assert "keys must be strings, got the integer 123: quote it" in issue.message


def test_top_level_must_be_a_mapping() -> None:
    issue = one_issue("- queues\n")
    assert (issue.line, issue.message) == (1, "expected a mapping (key: value lines), got a list")


def test_named_settings_cannot_hide_in_arguments() -> None:
    issue = one_issue("queues:\n  q:\n    arguments:\n      x-custom: 1\n      x-max-priority: 5\n")
    assert (issue.line, issue.path) == (5, "queues.q.arguments.x-max-priority")
    assert 'set "max_priority" instead' in issue.message


def test_arguments_pass_through_verbatim_including_nested_values() -> None:
    topology = load_topology_text(
        "exchanges:\n  h: {type: headers, arguments: {alternate-exchange: ae}}\n  ae: {type: fanout}\n"
        "queues:\n  q:\n    arguments: {x-single-active-consumer: true, x-list: [1, {a: b}]}\n"
        "    bindings:\n      - {exchange: h, arguments: {x-match: any, format: pdf}}\n"
    )
    assert dict(topology.queues["q"].arguments) == {"x-single-active-consumer": True, "x-list": [1, {"a": "b"}]}
    assert dict(topology.exchanges["h"].arguments) == {"alternate-exchange": "ae"}
    assert dict(topology.bindings[0].arguments) == {"x-match": "any", "format": "pdf"}


@pytest.mark.parametrize(
    "value", ["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!python/object:object {}"]
)
def test_unsafe_yaml_tags_are_refused_not_executed(value: str) -> None:
    issue = one_issue(f"queues:\n  q:\n    type: {value}\n")
    assert "unsupported YAML tag tag:yaml.org,2002:python/" in issue.message
    assert (issue.line, issue.path) == (3, "queues.q.type")


def test_yaml_merge_keys_work_and_own_keys_override() -> None:
    topology = load_topology_text(
        "queues:\n  a: &q {type: quorum, delivery_limit: 5}\n  b:\n    <<: *q\n    delivery_limit: 9\n"
    )
    assert (topology.queues["b"].type, topology.queues["b"].delivery_limit) == ("quorum", 9)


def test_every_error_is_reported_at_once_in_line_order() -> None:
    issues = issues_of(
        "exchanges:\n"
        "  tasks: {type: dirct}\n"            # 2 unknown type
        "queues:\n"
        "  celery:\n"
        "    type: quorum\n"
        "    max_priority: 5\n"               # 6 not on quorum
        "    message_ttl: soon\n"             # 7 bad duration
        "    bindings:\n"
        "      - {exchange: taks}\n"          # 9 undeclared exchange
        "routes:\n"
        "  'x.*': {queue: celry}\n"           # 11 undeclared queue
    )
    assert [i.line for i in issues] == [2, 6, 7, 9, 11]
    text = str(TopologyError(issues))
    assert text.startswith("5 topology errors:")
    assert "t.yaml:9: queues.celery.bindings[0].exchange:" in text


def test_identical_definitions_in_two_files_merge_and_bindings_add_up() -> None:
    topology = load_topology([DATA / "merge" / "a.yaml", DATA / "merge" / "b_same.yaml"])
    assert list(topology.queues) == ["celery", "reports"]
    assert [b.routing_key for b in topology.bindings] == ["celery", "celery.urgent"]
    assert len(topology.routes) == 1
    assert topology.queues["celery"].origin == Origin(str(DATA / "merge" / "a.yaml"), 4)


def test_conflicting_definitions_name_both_files_and_lines() -> None:
    a, b = DATA / "merge" / "a.yaml", DATA / "merge" / "b_conflict.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology([a, b])
    found = {(i.file, i.line, i.path): i.message for i in info.value.issues}
    assert found[(str(b), 2, "exchanges.tasks")] == (
        f'exchange "tasks" is defined differently here and at {a}:2 (differs in: type): '
        "make the definitions identical or keep only one"
    )
    assert f"at {a}:4 (differs in: max_length)" in found[(str(b), 4, "queues.celery")]
    assert f"at {a}:9 (differs in: queue)" in found[(str(b), 8, "routes.emails.*")]
    assert found[(str(b), 9, "routes.bad")] == "expected a mapping (key: value lines), got the integer 5"
    assert len(info.value.issues) == 4, found


def test_a_directory_means_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("queues:\n  second: {}\n")
    (tmp_path / "a.yml").write_text("queues:\n  first: {}\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    assert list(load_topology(tmp_path).queues) == ["first", "second"]
    assert list(load_topology(str(tmp_path / "b.yaml")).queues) == ["second"]


def test_missing_files_are_reported_with_the_other_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues:\n  q: {durable: maybe}\n")
    with pytest.raises(TopologyError) as info:
        load_topology([tmp_path / "missing.yaml", bad])
    assert [(Path(i.file).name, i.line) for i in info.value.issues] == [("missing.yaml", None), ("bad.yaml", 2)]
    assert "cannot read the file" in info.value.issues[0].message


def test_a_syntax_error_in_one_file_does_not_hide_errors_in_another() -> None:
    with pytest.raises(TopologyError) as info:
        load_documents([("one.yaml", "queues: [\n"), ("two.yaml", "queues:\n  q: {max_priority: 0}\n")])
    assert [(i.file, i.line) for i in info.value.issues] == [("one.yaml", 2), ("two.yaml", 2)]


def test_references_into_an_unparsable_file_are_not_reported() -> None:
    # one.yaml would have declared "tasks"; complaining that it is missing would be noise.
    with pytest.raises(TopologyError) as info:
        load_documents([("one.yaml", "exchanges: {tasks: {}\n"),
                        ("two.yaml", "queues:\n  q:\n    bindings: [{exchange: tasks}]\n")])
    assert [i.file for i in info.value.issues] == ["one.yaml"]


def test_a_broken_entity_still_counts_as_declared() -> None:
    issue = one_issue("exchanges:\n  tasks: [direct]\nqueues:\n  q:\n    bindings: [{exchange: tasks}]\n")
    assert (issue.line, issue.path) == (2, "exchanges.tasks")
