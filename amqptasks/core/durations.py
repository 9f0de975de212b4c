"""Durations in topology files: ``500ms``, ``30s``, ``5m``, ``1h``, ``7d`` or integer milliseconds."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

UNIT_MS: dict[str, int] = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Longest unit first so format_duration picks the shortest exact spelling.
_UNITS_DESC: tuple[tuple[str, int], ...] = tuple(sorted(UNIT_MS.items(), key=lambda kv: -kv[1]))
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$")
DURATION_HINT = "write a duration like 500ms, 30s, 5m, 1h, 7d, or an integer number of milliseconds"


def parse_duration(value: object) -> int:
    """Milliseconds for ``value``: a non-negative int (milliseconds) or a string like ``1.5s``.

    Raises ValueError, naming the accepted forms, for anything else (bools, negatives, floats,
    unknown units, fractions that are not a whole number of milliseconds).
    """
    # bool is an int subclass; "ttl: yes" must not become 1 ms.
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got the boolean {str(value).lower()}; {DURATION_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}; {DURATION_HINT}")
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.isdigit():
            return int(stripped)
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f'invalid duration "{value}"; {DURATION_HINT}')
        number, unit = match.groups()
        try:
            total = Decimal(number) * UNIT_MS[unit]
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f'invalid duration "{value}"; {DURATION_HINT}') from exc
        if total != total.to_integral_value():
            raise ValueError(f'duration "{value}" is not a whole number of milliseconds: write it in ms')
        return int(total)
    raise ValueError(f"expected a duration, got {type(value).__name__} {value!r}; {DURATION_HINT}")


def format_duration(ms: int) -> str:
    """The shortest exact spelling of ``ms`` milliseconds: 3600000 -> ``1h``, 1500 -> ``1500ms``."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"expected a non-negative integer number of milliseconds, got {ms!r}")
    if ms == 0:
        return "0ms"
    for unit, size in _UNITS_DESC:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"  # pragma: no cover - "ms" always divides
