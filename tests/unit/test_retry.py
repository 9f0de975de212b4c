"""Backoff arithmetic and the retry / dead-letter decision, with a fixed random source."""

from __future__ import annotations

import pytest

from amqptasks.core.retry import (
    DEFAULT_MAX_RETRIES,
    DeadLetter,
    Retry,
    compute_backoff,
    decide,
)
from amqptasks.errors import ConfigurationError


def low() -> float:
    return 0.0


def high() -> float:
    return 0.999999


def half() -> float:
    return 0.5


# --- compute_backoff --------------------------------------------------------------------------


def test_exponential_without_jitter() -> None:
    assert [compute_backoff(n, jitter=False) for n in range(6)] == [1, 2, 4, 8, 16, 32]
    assert [compute_backoff(n, jitter=False, base=0.5) for n in range(3)] == [0.5, 1, 2]


def test_capped_at_backoff_max() -> None:
    assert compute_backoff(20, jitter=False) == 600
    assert compute_backoff(5, jitter=False, backoff_max=10) == 10
    assert compute_backoff(10_000, jitter=False) == 600  # no overflow for absurd attempts
    assert compute_backoff(10_000, backoff=1e300, jitter=False, backoff_max=60) == 60


def test_numeric_backoff_is_the_factor_as_in_celery() -> None:
    assert [compute_backoff(n, backoff=3, jitter=False) for n in range(4)] == [3, 6, 12, 24]
    assert compute_backoff(1, backoff=2.5, jitter=False, base=100) == 5  # base unused


def test_backoff_false_is_a_constant_unjittered_delay() -> None:
    assert [compute_backoff(n, backoff=False, base=7, rand=high) for n in range(4)] == [7, 7, 7, 7]
    assert compute_backoff(3, backoff=False, base=900) == 600


def test_jitter_draws_from_the_upper_half_and_is_never_zero() -> None:
    assert compute_backoff(3, rand=low) == 4  # cap 8 -> [4, 8)
    assert compute_backoff(3, rand=half) == 6
    assert 7.99 < compute_backoff(3, rand=high) < 8
    assert compute_backoff(0, rand=low) == 0.5
    assert compute_backoff(30, rand=low) == 300  # cap first, then jitter
    assert all(compute_backoff(n) > 0 for n in range(50))  # the real random source


def test_jitter_with_a_zero_base_is_zero() -> None:
    assert compute_backoff(4, base=0, rand=high) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": -1},
        {"attempt": True},
        {"attempt": 1.0},
        {"attempt": 1, "base": -1},
        {"attempt": 1, "base": float("nan")},
        {"attempt": 1, "backoff_max": 0},
        {"attempt": 1, "backoff_max": float("inf")},
        {"attempt": 1, "backoff": 0},
        {"attempt": 1, "backoff": -2},
        {"attempt": 1, "backoff": "3"},
    ],
)
def test_bad_backoff_arguments(kwargs: dict) -> None:
    attempt = kwargs.pop("attempt")
    with pytest.raises(ValueError):
        compute_backoff(attempt, **kwargs)


# --- decide -----------------------------------------------------------------------------------


class Flaky(Exception):
    pass


class VeryFlaky(Flaky):
    pass


def auto(retries: int, max_retries: int | None = 3, exc: BaseException | None = None, **kw: object):
    return decide(
        retries=retries,
        max_retries=max_retries,
        exc=exc if exc is not None else Flaky("db away"),
        autoretry_for=(Flaky,),
        explicit_retry=False,
        rand=low,
        **kw,  # type: ignore[arg-type]
    )


def test_an_exception_not_listed_dead_letters_at_once_with_type_and_message() -> None:
    decision = auto(0, exc=ValueError("bad input"))
    assert decision == DeadLetter("ValueError: bad input")
    assert decide(
        retries=0, max_retries=3, exc=KeyError(), autoretry_for=(), explicit_retry=False
    ) == DeadLetter("KeyError")


def test_autoretry_backs_off_until_max_retries_then_dead_letters() -> None:
    assert auto(0) == Retry(0.5, 1)
    assert auto(1) == Retry(1.0, 2)
    assert auto(2) == Retry(2.0, 3)
    final = auto(3)
    assert isinstance(final, DeadLetter)
    assert "max_retries=3 exceeded after 3 retries" in final.reason and "Flaky: db away" in final.reason


def test_autoretry_matches_subclasses() -> None:
    assert isinstance(auto(0, exc=VeryFlaky("x")), Retry)


def test_max_retries_zero_never_retries() -> None:
    assert isinstance(auto(0, max_retries=0), DeadLetter)


def test_max_retries_none_never_auto_retries_and_says_why() -> None:
    decision = auto(0, max_retries=None)
    assert isinstance(decision, DeadLetter)
    assert "max_retries is None" in decision.reason and "Flaky: db away" in decision.reason


def test_explicit_retry_with_no_limit_retries_forever() -> None:
    decision = decide(
        retries=1000, max_retries=None, exc=RuntimeError("again"), autoretry_for=(), explicit_retry=True, jitter=False
    )
    assert decision == Retry(600.0, 1001)


def test_explicit_retry_respects_max_retries() -> None:
    decision = decide(retries=3, max_retries=3, exc=RuntimeError("again"), autoretry_for=(), explicit_retry=True)
    assert isinstance(decision, DeadLetter) and "max_retries=3 exceeded" in decision.reason


def test_explicit_countdown_wins_over_backoff() -> None:
    decision = decide(
        retries=2, max_retries=5, exc=RuntimeError(), autoretry_for=(), explicit_retry=True, countdown=42
    )
    assert decision == Retry(42.0, 3)
    zero = decide(retries=0, max_retries=5, exc=RuntimeError(), autoretry_for=(), explicit_retry=True, countdown=0)
    assert zero == Retry(0.0, 1)


def test_backoff_settings_reach_the_countdown() -> None:
    assert auto(2, backoff=3, jitter=False) == Retry(12.0, 3)
    assert auto(2, backoff=False, base=5) == Retry(5.0, 3)
    assert auto(2, max_retries=10, jitter=False, backoff_max=3) == Retry(3.0, 3)


def test_bad_decide_arguments() -> None:
    with pytest.raises(ConfigurationError, match="negative"):
        decide(retries=0, max_retries=3, exc=RuntimeError(), autoretry_for=(), explicit_retry=True, countdown=-1)
    with pytest.raises(ConfigurationError, match="finite"):
        decide(retries=0, max_retries=3, exc=RuntimeError(), autoretry_for=(), explicit_retry=True, countdown=1e999)
    with pytest.raises(ConfigurationError, match="max_retries"):
        decide(retries=0, max_retries=-1, exc=RuntimeError(), autoretry_for=(), explicit_retry=True)
    with pytest.raises(ValueError, match="retries"):
        decide(retries=-1, max_retries=3, exc=RuntimeError(), autoretry_for=(), explicit_retry=True)


def test_default_max_retries_is_celerys() -> None:
    assert DEFAULT_MAX_RETRIES == 3
