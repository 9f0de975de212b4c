"""The failover decisions of core/failover.py: node order, backoff, the republish budget."""

from __future__ import annotations

import pytest

from amqptasks.core.failover import (
    MAX_ROUND_BACKOFF,
    NodeRing,
    Republish,
    round_backoff,
    unreachable_message,
)
from amqptasks.errors import BrokerUnavailable


def test_order_starts_with_the_node_in_use() -> None:
    ring = NodeRing(3)
    assert ring.order() == [0, 1, 2]
    ring.connected(1)
    assert ring.order() == [1, 2, 0]


def test_a_lost_node_is_tried_last() -> None:
    ring = NodeRing(3)
    ring.connected(1)
    ring.lost(1)
    assert ring.order() == [2, 0, 1]
    ring.lost(0)  # not the node in use: nothing changes
    assert ring.order() == [2, 0, 1]


def test_a_failed_round_comes_back_to_its_start() -> None:
    ring = NodeRing(3)
    for index in ring.order():
        ring.lost(index)
    assert ring.current == 0


def test_backoff_per_full_round_is_capped_and_reset_on_connect() -> None:
    assert round_backoff(0) == 0.0
    ring = NodeRing(2)
    waits = [ring.round_failed() for _ in range(8)]
    assert waits[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(waits) == MAX_ROUND_BACKOFF == waits[-1]
    ring.connected(0)
    assert ring.round_failed() == 0.25


def test_single_node_keeps_its_own_message() -> None:
    assert unreachable_message(["h:5672 (ConnectionRefusedError)"], "Start it (./scripts/rabbitmq.sh)") == "Start it (./scripts/rabbitmq.sh)"


def test_several_nodes_are_all_named_without_local_start_advice() -> None:
    text = unreachable_message(["a:1 (ConnectionRefusedError)", "b:2 (TimeoutError)"], "Start it (./scripts/rabbitmq.sh)")
    assert "a:1 (ConnectionRefusedError), b:2 (TimeoutError)" in text
    assert "rabbitmq.sh" not in text


def test_republish_budget_waits_longer_then_gives_up_naming_the_nodes() -> None:
    budget = Republish(attempts=2, delay=0.5)
    budget.on("a:1")
    assert budget.next_wait(3, "lost") == 0.5
    budget.on("b:2")
    budget.on("b:2")
    assert budget.next_wait(3, "lost") == 1.0
    with pytest.raises(BrokerUnavailable, match=r"at a:1, then b:2 \(lost\); 3 message\(s\) unconfirmed after 3 attempt"):
        budget.next_wait(3, "lost")


def test_a_node_that_refused_us_is_not_worth_waiting_for() -> None:
    from amqptasks.core.failover import no_node
    from amqptasks.errors import BrokerRefused

    assert type(no_node(["a:1 (ConnectionRefusedError)"], "down", refused=False)) is BrokerUnavailable
    assert isinstance(no_node(["a:1 (ProbableAuthenticationError)"], "refused", refused=True), BrokerRefused)
