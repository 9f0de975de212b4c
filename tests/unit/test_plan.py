"""The planner: statuses, differences argument by argument, the way out, and the rendered text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from amqptasks.core.plan import declare_order, plan_topology, render_plan, same_value
from amqptasks.core.plan_types import (
    Difference,
    ObservedExchange,
    ObservedQueue,
    ObservedState,
    Plan,
)
from amqptasks.core.topology import Binding, Exchange, Queue, Topology

TASKS = Exchange("tasks")
DEAD = Exchange("dead", type="fanout")
CELERY = Queue("celery", max_priority=10, message_ttl_ms=3_600_000, dead_letter_exchange="dead")
BIND = Binding("tasks", "celery", routing_key="celery")
TOPOLOGY = Topology({"tasks": TASKS, "dead": DEAD}, {"celery": CELERY}, (BIND,))


def seen_exchange(exchange: Exchange, **changes: Any) -> ObservedExchange:
    values = dict(name=exchange.name, type=exchange.type, durable=exchange.durable,
                  auto_delete=exchange.auto_delete, internal=exchange.internal, arguments=dict(exchange.arguments))
    values.update(changes)
    return ObservedExchange(**values)


def seen_queue(queue: Queue, arguments: Mapping[str, Any] | None = None, **flags: bool) -> ObservedQueue:
    values = dict(durable=queue.durable, auto_delete=queue.auto_delete, exclusive=queue.exclusive)
    values.update(flags)
    args = queue.declare_arguments() if arguments is None else arguments
    return ObservedQueue(queue.name, arguments=args, **values)


def observed(exchanges: list[ObservedExchange] | None = None, queues: list[ObservedQueue] | None = None,
             bindings: list[Binding] | None = None) -> ObservedState:
    return ObservedState(
        None if exchanges is None else {e.name: e for e in exchanges},
        None if queues is None else {q.name: q for q in queues},
        None if bindings is None else frozenset(b.key for b in bindings),
    )


def everything_present(**queue_changes: Any) -> ObservedState:
    return observed([seen_exchange(TASKS), seen_exchange(DEAD)], [seen_queue(CELERY, **queue_changes)], [BIND])


def test_order_is_exchanges_then_queues_then_bindings() -> None:
    assert declare_order(TOPOLOGY) == [TASKS, DEAD, CELERY, BIND]
    plan = plan_topology(TOPOLOGY, observed([], [], []))
    assert [(e.kind, e.name, e.status) for e in plan.entities] == [
        ("exchange", "tasks", "create"),
        ("exchange", "dead", "create"),
        ("queue", "celery", "create"),
        ("binding", 'tasks -> queue celery (routing key "celery")', "create"),
    ]
    assert plan.entities[2].entity is CELERY


def test_everything_present_is_unchanged() -> None:
    plan = plan_topology(TOPOLOGY, everything_present())
    assert plan.is_noop and not plan.conflicts and not plan.to_create
    assert render_plan(plan) == "No changes: 4 entities already match."


def test_unobservable_state_is_unknown_except_bindings_of_new_entities() -> None:
    plan = plan_topology(TOPOLOGY, observed(None, None, None))
    assert {e.status for e in plan.entities} == {"unknown"}
    # Exchanges observed (tasks absent), bindings not: the binding from a new exchange is new.
    plan = plan_topology(TOPOLOGY, observed([], None, None))
    assert [e.status for e in plan.entities] == ["create", "create", "unknown", "create"]


def test_classic_type_reported_by_the_broker_equals_absent() -> None:
    args = {**CELERY.declare_arguments(), "x-queue-type": "classic"}
    plan = plan_topology(TOPOLOGY, everything_present(arguments=args))
    assert plan.is_noop


def test_numbers_compare_by_value_but_booleans_are_not_numbers() -> None:
    assert same_value(1, 1.0) and same_value(3_600_000, 3_600_000.0)
    assert not same_value(True, 1) and not same_value(0, False)
    assert same_value({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not same_value([1], [1, 2])
    assert same_value(b"dead", "dead")
    args = {**CELERY.declare_arguments(), "x-max-priority": 10.0}
    assert plan_topology(TOPOLOGY, everything_present(arguments=args)).is_noop


def test_queue_conflict_lists_each_difference() -> None:
    args = {"x-max-priority": 5, "x-message-ttl": 3_600_000, "x-dead-letter-exchange": "dead", "x-extra": "v"}
    plan = plan_topology(TOPOLOGY, everything_present(arguments=args, durable=False))
    (conflict,) = plan.conflicts
    assert conflict.differences == (
        Difference("durable", True, False),
        Difference("x-max-priority", 10, 5),
        Difference("x-extra", None, "v"),
    )


def test_queue_type_change_is_a_difference() -> None:
    quorum = Queue("orders", type="quorum")
    plan = plan_topology(Topology(queues={"orders": quorum}), observed(None, [seen_queue(quorum, arguments={})]))
    assert plan.conflicts[0].differences == (Difference("x-queue-type", "quorum", "classic"),)
    assert "rabbitmqctl delete_queue orders" in plan.conflicts[0].advice


def test_a_setting_the_broker_lacks_can_move_to_a_policy() -> None:
    args = {k: v for k, v in CELERY.declare_arguments().items() if k != "x-message-ttl"}
    (conflict,) = plan_topology(TOPOLOGY, everything_present(arguments=args)).conflicts
    assert conflict.differences == (Difference("x-message-ttl", 3_600_000, None),)
    assert conflict.advice.splitlines()[0] == (
        'remove "message_ttl" from the file and set it with a policy (no restart, no message loss): '
        "rabbitmqctl set_policy celery-args '^celery$' '{\"message-ttl\":3600000}' --apply-to queues"
    )
    assert "delete_queue" not in conflict.advice


def test_policy_names_and_patterns_are_escaped() -> None:
    queue = Queue("celery.dead", message_ttl_ms=1000, max_length=5)
    plan = plan_topology(Topology(queues={"celery.dead": queue}), observed(None, [seen_queue(queue, arguments={})]))
    advice = plan.conflicts[0].advice
    assert "remove \"message_ttl\", \"max_length\" from the file and set them with a policy" in advice
    assert "set_policy celery.dead-args '^celery\\.dead$' '{\"message-ttl\":1000,\"max-length\":5}'" in advice


def test_a_classic_queue_where_the_file_says_quorum_is_a_conflict_with_a_migration_way_out() -> None:
    quorum = Queue("celery", type="quorum", delivery_limit=20)
    classic_args = {"x-queue-type": "classic"}  # RabbitMQ 4.0 reports it; 3.x reports nothing
    for arguments in (classic_args, {}):
        (conflict,) = plan_topology(Topology(queues={"celery": quorum}), observed(None, [seen_queue(quorum, arguments)])).conflicts
        assert [(d.field, d.expected, d.actual) for d in conflict.differences] == [
            ("x-queue-type", "quorum", "classic"), ("x-delivery-limit", 20, None),
        ]
        advice = conflict.advice
        assert "change the file to match it: type: classic; remove \"delivery_limit\"" in advice
        assert "set_policy" not in advice  # no policy changes a queue's type
        assert "move it to a quorum queue without losing messages" in advice
        assert "rabbitmqctl delete_queue celery, start them again: it is declared anew as quorum" in advice


def test_a_classic_queue_reported_with_its_type_is_unchanged() -> None:
    # RabbitMQ 4.0 reports x-queue-type: classic on every classic queue; files leave it out.
    plain = Queue("celery")
    plan = plan_topology(Topology(queues={"celery": plain}), observed(None, [seen_queue(plain, {"x-queue-type": "classic"})]))
    assert [e.status for e in plan.entities] == ["unchanged"]


def test_max_priority_is_not_policyable_so_the_way_out_is_to_match_or_recreate() -> None:
    args = {k: v for k, v in CELERY.declare_arguments().items() if k != "x-max-priority"}
    (conflict,) = plan_topology(TOPOLOGY, everything_present(arguments=args)).conflicts
    lines = conflict.advice.splitlines()
    assert lines == [
        'keep the broker\'s queue (no message loss): change the file to match it: remove "max_priority"',
        "or delete and recreate it: rabbitmqctl delete_queue celery - this loses the messages in it, and its "
        "bindings must be re-applied (declaring the topology again recreates the queue and its bindings)",
    ]


def test_a_broker_value_cannot_be_overridden_by_policy_so_advice_offers_the_broker_value() -> None:
    args = {**CELERY.declare_arguments(), "x-message-ttl": 60_000, "x-dead-letter-exchange": "other.dead"}
    (conflict,) = plan_topology(TOPOLOGY, everything_present(arguments=args)).conflicts
    assert "set_policy" not in conflict.advice
    assert "change the file to match it: message_ttl: 1m; dead_letter.exchange: other.dead" in conflict.advice


def test_exchange_conflicts() -> None:
    state = observed([seen_exchange(TASKS, type="topic", arguments={"alternate-exchange": "ae"}), seen_exchange(DEAD)],
                     [seen_queue(CELERY)], [BIND])
    (conflict,) = plan_topology(TOPOLOGY, state).conflicts
    assert (conflict.kind, conflict.name) == ("exchange", "tasks")
    assert conflict.differences == (
        Difference("type", "direct", "topic"),
        Difference("alternate-exchange", None, "ae"),
    )
    assert "change the file to match it: type: topic; arguments.alternate-exchange: ae" in conflict.advice
    assert "rabbitmqadmin delete exchange name=tasks" in conflict.advice
    assert "bindings go with it" in conflict.advice


def test_bindings_are_present_or_absent() -> None:
    other = Binding("tasks", "celery", routing_key="other")
    topology = Topology(TOPOLOGY.exchanges, TOPOLOGY.queues, (BIND, other))
    state = observed([seen_exchange(TASKS), seen_exchange(DEAD)], [seen_queue(CELERY)], [BIND])
    statuses = [(e.kind, e.status) for e in plan_topology(topology, state).entities if e.kind == "binding"]
    assert statuses == [("binding", "unchanged"), ("binding", "create")]


def test_render_plan_shows_what_changes_and_summarises() -> None:
    args = {k: v for k, v in CELERY.declare_arguments().items() if k != "x-message-ttl"}
    state = observed([seen_exchange(TASKS)], [seen_queue(CELERY, arguments=args)], [])
    text = render_plan(plan_topology(TOPOLOGY, state))
    assert text.splitlines() == [
        "+ exchange dead (fanout): create",
        "! queue celery (classic): CONFLICT",
        "    x-message-ttl: expected 3600000 (1h), actual (not set)",
        "    way out:",
        '      - remove "message_ttl" from the file and set it with a policy (no restart, no message loss): '
        "rabbitmqctl set_policy celery-args '^celery$' '{\"message-ttl\":3600000}' --apply-to queues",
        "        (a queue follows one policy at a time: merge these keys into any policy that already matches it)",
        '+ binding tasks -> queue celery (routing key "celery"): create',
        "= 1 unchanged (use verbose to list them)",
        "Plan: 2 to create, 1 unchanged, 1 conflict.",
    ]


def test_render_plan_verbose_and_unknown() -> None:
    state = observed([seen_exchange(TASKS), seen_exchange(DEAD)], None, None)
    text = render_plan(plan_topology(TOPOLOGY, state), verbose=True)
    assert text.splitlines() == [
        "= exchange tasks (direct): unchanged",
        "= exchange dead (fanout): unchanged",
        "? queue celery (classic): unknown (cannot be observed; a declare will settle it)",
        '? binding tasks -> queue celery (routing key "celery"): unknown (cannot be observed; a declare will settle it)',
        "Plan: 0 to create, 2 unchanged, 2 unknown, 0 conflicts.",
    ]


@pytest.mark.parametrize(
    ("plan", "summary"),
    [
        (Plan(), "No changes: the topology is empty."),
        (plan_topology(Topology({"tasks": TASKS}), observed([seen_exchange(TASKS)])), "No changes: 1 entity already matches."),
    ],
)
def test_render_plan_summaries(plan: Plan, summary: str) -> None:
    assert render_plan(plan) == summary


def test_binding_names_show_arguments_and_exchange_destinations() -> None:
    topology = Topology(
        {"h": Exchange("h", type="headers"), "audit": Exchange("audit", type="fanout")},
        {},
        (Binding("h", "audit", "exchange", arguments={"x-match": "any"}),),
    )
    names = [e.name for e in plan_topology(topology, observed(None, None, None)).entities]
    assert names[-1] == "h -> exchange audit {'x-match': 'any'}"
