"""Coalesced acks: only the contiguous finished prefix goes in a multiple ack; nothing is lost."""

from __future__ import annotations

import random

import pytest

from amqptasks.core.acks import AckBatch, AckWindow


def test_in_order_completions_become_one_multiple_ack() -> None:
    window = AckWindow()
    for tag in (1, 2, 3):
        window.settle(tag)
    assert window.take() == AckBatch(3, ())
    assert not window.take()


def test_a_running_delivery_blocks_the_multiple_ack_above_it() -> None:
    window = AckWindow(hold=3)
    window.settle(2)
    window.settle(3)
    assert window.take() == AckBatch(None, ())  # 1 still runs: 2 and 3 wait
    window.settle(1)
    assert window.take() == AckBatch(3, ())


def test_finished_deliveries_above_a_gap_are_acked_singly_when_too_many_wait() -> None:
    window = AckWindow(hold=2)
    window.settle(2)
    assert window.take() == AckBatch(None, ())
    window.settle(3)
    assert window.take() == AckBatch(None, (2, 3))
    # When 1 finishes, the multiple ack must stop at 1: 2 and 3 are no longer held by the broker.
    window.settle(1)
    assert window.take() == AckBatch(1, ())
    window.settle(4)
    assert window.take() == AckBatch(4, ())


def test_force_acks_everything_finished() -> None:
    window = AckWindow(hold=100)
    window.settle(3)
    window.settle(5)
    assert window.take(force=True) == AckBatch(None, (3, 5))
    assert window.waiting == 0


def test_rejected_deliveries_close_the_gap_without_being_acked() -> None:
    window = AckWindow()
    window.settle(1, acked=True)  # requeued with basic.reject
    assert window.take() == AckBatch(None, ())
    window.settle(2)
    assert window.take() == AckBatch(2, ())


def test_settling_a_tag_twice_is_a_bug() -> None:
    window = AckWindow()
    window.settle(1)
    window.take()
    with pytest.raises(ValueError, match="settled twice"):
        window.settle(1)


@pytest.mark.parametrize("seed", range(30))
def test_every_finished_tag_is_acked_exactly_once_in_any_order(seed: int) -> None:
    rng = random.Random(seed)
    tags = list(range(1, 200))
    rng.shuffle(tags)
    window = AckWindow(hold=rng.randint(1, 20))
    outstanding = set()  # delivered, finished or not, not yet settled on the wire
    acked: list[int] = []
    outstanding.update(tags)
    for i, tag in enumerate(tags):
        window.settle(tag)
        if rng.random() < 0.5 or i == len(tags) - 1:
            batch = window.take(force=i == len(tags) - 1)
            if batch.upto is not None:
                assert batch.upto in outstanding  # the broker still holds it
                covered = {t for t in outstanding if t <= batch.upto}
                assert covered <= set(tags[: i + 1])  # nothing unfinished is acked
                acked.extend(covered)
                outstanding -= covered
            for single in batch.singles:
                assert single in outstanding
                acked.append(single)
                outstanding.discard(single)
    assert sorted(acked) == sorted(tags)
