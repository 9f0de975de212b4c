"""Which plain-function tasks run on the event loop (worker/inline.py): promotion, demotion, the watchdog."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from amqptasks.worker.inline import (
    BLOCKING,
    DEMOTE_AFTER,
    INSTANT,
    PROMOTE_AFTER,
    STRIKE_WINDOW,
    InlinePolicy,
    LoopWatchdog,
)

FAST = INSTANT / 10
SLOW_ON_THREAD = INSTANT * 2


def promoted(policy: InlinePolicy, task: str = "t.add") -> InlinePolicy:
    for _ in range(PROMOTE_AFTER):
        policy.ran_on_thread(task, FAST)
    return policy


def test_a_task_runs_on_the_loop_only_after_enough_instant_calls_in_a_row() -> None:
    policy = InlinePolicy()
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_on_thread("t.add", FAST)
    assert not policy.runs_inline("t.add", redelivered=False)
    policy.ran_on_thread("t.add", SLOW_ON_THREAD)  # the streak starts over
    for _ in range(PROMOTE_AFTER - 1):
        policy.ran_on_thread("t.add", FAST)
    assert not policy.runs_inline("t.add", redelivered=False)
    policy.ran_on_thread("t.add", FAST)
    assert policy.runs_inline("t.add", redelivered=False)
    assert not policy.runs_inline("t.other", redelivered=False)  # per task


def test_a_redelivered_message_always_runs_on_a_thread() -> None:
    policy = promoted(InlinePolicy())
    assert not policy.runs_inline("t.add", redelivered=True)
    assert policy.runs_inline("t.add", redelivered=False)


def test_a_second_loop_call_that_blocks_soon_after_the_first_sends_the_task_back_to_threads_for_good() -> None:
    policy = promoted(InlinePolicy())
    assert policy.ran_inline("t.add", DEMOTE_AFTER / 2) is False
    assert policy.ran_inline("t.add", DEMOTE_AFTER) is False  # once: a preempted process, perhaps
    assert policy.runs_inline("t.add", redelivered=False)
    for _ in range(STRIKE_WINDOW - 1):
        assert policy.ran_inline("t.add", FAST) is False
    assert policy.ran_inline("t.add", DEMOTE_AFTER) is True  # twice within the window: it blocks
    assert not policy.runs_inline("t.add", redelivered=False)
    promoted(policy)  # instant again, many times: still on threads
    assert not policy.runs_inline("t.add", redelivered=False)


def test_one_loop_call_that_blocks_long_sends_the_task_back_at_once() -> None:
    policy = promoted(InlinePolicy())
    assert policy.ran_inline("t.add", BLOCKING) is True
    assert not policy.runs_inline("t.add", redelivered=False)


def test_slow_loop_calls_far_apart_are_each_forgiven() -> None:
    policy = promoted(InlinePolicy())
    for _ in range(3):
        assert policy.ran_inline("t.add", DEMOTE_AFTER) is False
        for _ in range(STRIKE_WINDOW):
            policy.ran_inline("t.add", FAST)
    assert policy.runs_inline("t.add", redelivered=False)
    assert policy.ran_inline("t.other", DEMOTE_AFTER) is False  # per task


def test_disabled_nothing_moves_to_the_loop() -> None:
    policy = promoted(InlinePolicy(enabled=False))
    assert not policy.runs_inline("t.add", redelivered=False)


@pytest.mark.timeout(10)
def test_the_watchdog_reports_a_loop_call_past_its_limit_once_and_not_a_short_one() -> None:
    reports: list[tuple[str, float]] = []
    reported = threading.Event()

    def on_hang(what: str, seconds: float) -> None:
        reports.append((what, seconds))
        reported.set()

    watchdog = LoopWatchdog(limit=0.2, on_hang=on_hang)
    watchdog.enter("task quick[1]")
    watchdog.leave()
    time.sleep(0.4)
    assert reports == []
    watchdog.enter("task stuck[2]")
    assert reported.wait(5)
    time.sleep(0.3)  # still stuck: not reported again
    watchdog.leave()
    assert [what for what, _ in reports] == ["task stuck[2]"]
    assert reports[0][1] >= 0.2


@pytest.mark.timeout(30)
def test_the_default_verdict_logs_why_and_ends_the_process_with_1() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "from amqptasks.worker.inline import exit_process\n"
        "exit_process('task t.stuck[abc]', 31.0)\n"
        "print('still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert "still running" not in done.stdout
    assert "task t.stuck[abc] has blocked the event loop for 31 s" in done.stderr
    assert "--no-inline" in done.stderr
