"""Retries: the backoff between attempts and the decision "retry, or dead-letter?". Pure.

The worker calls :func:`decide` when a task raised; the answer is :class:`Retry` (republish the
task through the delay cascade after ``countdown`` seconds, with ``retries`` incremented — a new
publish, never a requeue loop) or :class:`DeadLetter` (reject it to the dead-letter target, with
``reason`` in the headers).

Rules (Celery-compatible where Celery is sane):

* ``retries`` is how many times the task has been retried already (the ``retries`` header, 0 on
  the first run); the retry being decided is attempt number ``retries`` of :func:`compute_backoff`
  (so the first retry waits ``base``, the next ``2*base``, …).
* An explicit ``self.retry()`` (``explicit_retry=True``) retries while ``retries < max_retries``;
  ``max_retries=None`` means no limit for explicit retries: the task's code decides when to stop.
* An exception is retried automatically only when it is an instance of one of ``autoretry_for``
  *and* ``max_retries`` is a number. ``max_retries=None`` never auto-retries: an unbounded automatic
  retry of a poison message is the infinite loop this project exists to avoid. (The task decorator
  should reject ``autoretry_for`` without a numeric ``max_retries`` up front; ``DEFAULT_MAX_RETRIES``
  is Celery's 3.)
* Anything else dead-letters at once, with the exception's type and message as the reason.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amqptasks.errors import ConfigurationError, TaskRetry

if TYPE_CHECKING:
    from amqptasks.core.options import TaskOptions

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_MAX = 600.0  # seconds
DEFAULT_BASE = 1.0  # seconds
_MAX_EXPONENT = 1000  # 2.0**1000 is finite; beyond it every cap is reached anyway


def compute_backoff(
    attempt: int,
    *,
    backoff: bool | float = True,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
    jitter: bool = True,
    base: float = DEFAULT_BASE,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    * ``backoff=True``: exponential, ``base * 2**attempt`` (1, 2, 4, 8, … with ``base=1``).
    * ``backoff=<number>``: that number is the factor, as Celery's ``retry_backoff=3`` → 3, 6, 12, …
      (``base`` is then unused).
    * ``backoff=False``: a constant ``base`` every time, never jittered (an explicit fixed delay).

    The exponential value is capped at ``backoff_max``. With ``jitter`` the result is drawn
    uniformly from the upper half ``[cap/2, cap)`` — "equal jitter": it spreads a herd of
    retries apart like full jitter does, but never collapses to an immediate retry (full jitter,
    ``uniform(0, cap)``, can return ~0 and hammer a failing dependency at once). ``rand`` returns a
    float in ``[0, 1)``; tests pass a fixed one.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
    _check_seconds(base, "base", allow_zero=True)
    _check_seconds(backoff_max, "backoff_max", allow_zero=False)
    if backoff is False:
        return float(min(base, backoff_max))
    if backoff is True:
        factor = float(base)
    else:
        _check_seconds(backoff, "backoff", allow_zero=False)
        factor = float(backoff)
    cap = min(backoff_max, factor * 2.0 ** min(attempt, _MAX_EXPONENT))
    if not jitter:
        return cap
    return cap / 2 + rand() * cap / 2


def _check_seconds(value: object, name: str, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'≥' if allow_zero else '>'} 0 seconds, got {value!r}")


@dataclass(frozen=True)
class Retry:
    """Republish the task after ``countdown`` seconds with the ``retries`` header set to ``retries``."""

    countdown: float
    retries: int = 1


@dataclass(frozen=True)
class DeadLetter:
    """Give up: dead-letter the message; ``reason`` goes into the ``x-amqptasks-reason`` header."""

    reason: str


Decision = Retry | DeadLetter


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide(
    *,
    retries: int,
    max_retries: int | None,
    exc: BaseException,
    autoretry_for: tuple[type[BaseException], ...],
    explicit_retry: bool,
    countdown: float | None = None,
    backoff: bool | float = True,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
    jitter: bool = True,
    base: float = DEFAULT_BASE,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry or dead-letter a task that raised ``exc`` after ``retries`` earlier retries.

    ``countdown`` is the delay an explicit ``self.retry(countdown=...)`` asked for (seconds);
    without one, :func:`compute_backoff` with the backoff arguments picks it. See the module
    docstring for the rules.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    bad_max = isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    if max_retries is not None and bad_max:
        raise ConfigurationError(f"max_retries must be a non-negative integer or None, got {max_retries!r}")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not math.isfinite(countdown):
            raise ConfigurationError(f"retry countdown must be a finite number of seconds, got {countdown!r}")
        if countdown < 0:
            raise ConfigurationError(f"retry countdown must not be negative, got {countdown!r} seconds")

    if explicit_retry:
        pass
    elif autoretry_for and isinstance(exc, autoretry_for):
        if max_retries is None:
            return DeadLetter(
                f"{_describe(exc)} (not retried automatically: max_retries is None; "
                "set max_retries to a number to auto-retry, or call self.retry() yourself)"
            )
    else:
        return DeadLetter(_describe(exc))

    if max_retries is not None and retries >= max_retries:
        return DeadLetter(f"max_retries={max_retries} exceeded after {retries} retries; last error: {_describe(exc)}")
    if countdown is None:
        countdown = compute_backoff(
            retries, backoff=backoff, backoff_max=backoff_max, jitter=jitter, base=base, rand=rand
        )
    return Retry(float(countdown), retries + 1)


def decide_for_task(options: TaskOptions, *, retries: int, error: BaseException | None) -> Decision:
    """:func:`decide` with a task's own settings; ``error`` is what the run raised."""
    if error is None:
        return DeadLetter("task failed without an exception")
    retry = error if isinstance(error, TaskRetry) else None
    explicit = retry is not None
    cause = retry.exc if retry is not None and retry.exc is not None else error
    return decide(
        retries=retries,
        max_retries=options.max_retries,
        exc=cause,
        autoretry_for=options.autoretry_for,
        explicit_retry=explicit,
        countdown=retry.countdown if retry is not None else None,
        backoff=options.retry_backoff,
        backoff_max=options.retry_backoff_max,
        jitter=options.retry_jitter,
        base=DEFAULT_BASE if options.retry_backoff is not False else options.default_retry_delay,
    )
