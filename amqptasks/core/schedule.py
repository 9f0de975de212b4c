"""When a task is due or expires: ``countdown`` / ``eta`` / ``expires`` to epoch milliseconds.

Rounded up to the millisecond, so a task is never due early; bounded by the longest delay the
delay cascade can hold (``core/delays.py``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from amqptasks.core.delays import LEVELS, RADIX, max_delay_ms
from amqptasks.errors import ConfigurationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AWARE_HINT = "use an aware datetime, e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"


def _aware_ms_ceil(value: datetime, what: str) -> int:
    """Epoch milliseconds of an aware datetime, rounded up (never early)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(
            f"{what} must be timezone-aware, got the naive datetime {value.isoformat()}; {_AWARE_HINT}"
        )
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


def _seconds_to_ms_ceil(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be a number of seconds, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ConfigurationError(f"{what} must not be negative, got {value!r} seconds")
    if value > 2**53 / 1000:
        raise ConfigurationError(f"{what} of {value!r} seconds is beyond any delay amqptasks can express")
    # round to the microsecond first so 1.1 s (1100.0000000000002 ms in binary) is 1100 ms, not 1101
    return math.ceil(round(value * 1000, 3))


def delay_ms_for(
    *,
    now_ms: int,
    countdown: float | None = None,
    eta: datetime | None = None,
    levels: int = LEVELS,
    radix: int = RADIX,
) -> int | None:
    """How long to hold a task, in ms, from ``countdown`` (seconds from now) or ``eta`` (an aware
    datetime); None when neither is given.

    Rounded up to the millisecond: a task is never due early. An ``eta`` in the past gives 0
    (due now). 0 means "deliver now": the caller may publish directly. Raises
    :class:`ConfigurationError` for both given, a negative or non-finite countdown, a naive eta,
    or a delay beyond :func:`max_delay_ms`.
    """
    if countdown is not None and eta is not None:
        raise ConfigurationError("give either countdown (seconds from now) or eta (an aware datetime), not both")
    if countdown is not None:
        delay = _seconds_to_ms_ceil(countdown, "countdown")
    elif eta is not None:
        if not isinstance(eta, datetime):
            raise ConfigurationError(f"eta must be a datetime, got {type(eta).__name__} {eta!r}; {_AWARE_HINT}")
        delay = max(0, _aware_ms_ceil(eta, "eta") - now_ms)
    else:
        return None
    limit = max_delay_ms(levels, radix)
    if delay > limit:
        what = "countdown" if countdown is not None else "eta"
        years = limit / 86_400_000 / 365.25
        raise ConfigurationError(f"{what} is {delay} ms away; the longest delay is {limit} ms (about {years:.1f} years)")
    return delay


def due_ms(*, now_ms: int, countdown: float | None = None, eta: datetime | None = None) -> int | None:
    """Epoch ms when the task is due (the ``eta`` header): ``now_ms + delay_ms_for(...)``, or None."""
    delay = delay_ms_for(now_ms=now_ms, countdown=countdown, eta=eta)
    return None if delay is None else now_ms + delay


def expires_ms_for(*, now_ms: int, expires: float | datetime | None) -> int | None:
    """Epoch ms after which the task must not run (the ``expires`` header), or None.

    ``expires`` is seconds from now (≥ 0) or an aware datetime (a past one gives an already
    expired task: the worker discards it). Naive datetimes raise :class:`ConfigurationError`.
    """
    if expires is None:
        return None
    if isinstance(expires, datetime):
        return _aware_ms_ceil(expires, "expires")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise ConfigurationError(
            f"expires must be seconds from now or an aware datetime, got {type(expires).__name__} {expires!r}"
        )
    return now_ms + _seconds_to_ms_ceil(expires, "expires")
