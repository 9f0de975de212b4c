"""Which running tasks a consumer_timeout channel close is blamed on (worker/overrun.py)."""

from __future__ import annotations

from amqptasks.worker.overrun import Overruns

CLOSED = ("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 3000 ms. "
          "This timeout value can be configured, see consumers doc guide to learn more")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_tasks_running_longer_than_the_timeout_are_blamed_and_remembered() -> None:
    clock = Clock()
    overruns = Overruns(clock)
    overruns.started("long")
    clock.now += 2.5
    overruns.started("short")
    clock.now += 1.0
    assert overruns.channel_closed(RuntimeError(CLOSED)) == ["long"]
    reason = overruns.reason_for("long")
    assert reason is not None and reason.startswith("consumer_timeout: ") and "3000 ms" in reason
    assert overruns.reason_for("short") is None


def test_without_a_timeout_value_the_longest_running_is_blamed() -> None:
    clock = Clock()
    overruns = Overruns(clock)
    overruns.started("first")
    clock.now += 1
    overruns.started("second")
    assert overruns.channel_closed(RuntimeError("delivery acknowledgement on channel 7 timed out")) == ["first"]


def test_other_closes_and_finished_tasks_blame_nobody() -> None:
    clock = Clock()
    overruns = Overruns(clock)
    overruns.started("a")
    clock.now += 10
    assert overruns.channel_closed(ConnectionError("CONNECTION_FORCED - broker forced connection closure")) == []
    assert overruns.channel_closed(None) == []
    overruns.finished("a")
    assert overruns.channel_closed(RuntimeError(CLOSED)) == []
    assert overruns.reason_for("a") is None


def test_with_a_timeout_value_a_task_taken_after_it_began_is_not_blamed() -> None:
    # The broker timed out a delivery this process no longer runs (or one it counted from earlier):
    # a task taken 2 s before a 3 s timeout did not outrun it and must run again if it comes back.
    clock = Clock()
    overruns = Overruns(clock)
    overruns.started("recent")
    clock.now += 2.0
    assert overruns.channel_closed(RuntimeError(CLOSED)) == []
    assert overruns.reason_for("recent") is None
