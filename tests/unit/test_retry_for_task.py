"""The worker's retry decision with a task's own settings, and a retry's headers."""

from amqptasks.core.envelope import H_ETA, H_RETRIES, retry_headers
from amqptasks.core.options import TaskOptions
from amqptasks.core.retry import DeadLetter, Retry, decide_for_task
from amqptasks.errors import TaskRetry


def test_autoretry_backs_off_exponentially_without_jitter() -> None:
    options = TaskOptions(name="t", max_retries=5, retry_backoff=True, retry_jitter=False, autoretry_for=(ConnectionError,))
    decisions = [decide_for_task(options, retries=n, error=ConnectionError("down")) for n in range(6)]
    assert decisions[:5] == [Retry(1.0, 1), Retry(2.0, 2), Retry(4.0, 3), Retry(8.0, 4), Retry(16.0, 5)]
    assert isinstance(decisions[5], DeadLetter) and "max_retries=5" in decisions[5].reason


def test_other_exceptions_are_not_auto_retried() -> None:
    options = TaskOptions(name="t", max_retries=5, autoretry_for=(ConnectionError,))
    decision = decide_for_task(options, retries=0, error=ValueError("boom"))
    assert isinstance(decision, DeadLetter) and "ValueError" in decision.reason and "boom" in decision.reason


def test_explicit_retry_uses_its_countdown_and_reports_its_cause() -> None:
    options = TaskOptions(name="t", max_retries=3)
    assert decide_for_task(options, retries=2, error=TaskRetry(exc=KeyError("k"), countdown=10)) == Retry(10.0, 3)
    final = decide_for_task(options, retries=3, error=TaskRetry(exc=KeyError("k"), countdown=10))
    assert isinstance(final, DeadLetter) and "KeyError" in final.reason


def test_explicit_retry_without_countdown_waits_default_retry_delay() -> None:
    options = TaskOptions(name="t", max_retries=3, default_retry_delay=7.5)
    assert decide_for_task(options, retries=0, error=TaskRetry()) == Retry(7.5, 1)


def test_retry_headers_count_up_set_eta_and_drop_the_broker_history() -> None:
    original = {"task": "t", "id": "1", "retries": 1, "x-death": [{"queue": "amqptasks.delay.0.3"}], "x-first-death-queue": "q", "keep": 1}
    headers = retry_headers(original, retries=2, due_ms=123)
    assert headers == {"task": "t", "id": "1", H_RETRIES: 2, H_ETA: 123, "keep": 1}
    assert original["retries"] == 1  # the original is not changed
