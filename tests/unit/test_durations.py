"""Durations in topology files: units, integers, and the errors for everything else."""

from __future__ import annotations

import pytest

from amqptasks.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        (0, 0),
        (1500, 1500),
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("7d", 604_800_000),
        ("1.5s", 1500),
        ("0.5h", 1_800_000),
        ("2.25m", 135_000),
        ("250", 250),
        (" 30s ", 30_000),
    ],
)
def test_parses_units_and_integers(text: object, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "boolean true"),
        (False, "boolean false"),
        (-1, "must not be negative"),
        (1.5, "float"),
        (None, "NoneType"),
        ("", "invalid duration"),
        ("5 minutes", "invalid duration"),
        ("5x", "invalid duration"),
        ("1w", "invalid duration"),
        ("-5s", "invalid duration"),
        ("1.5ms", "not a whole number of milliseconds"),
        ("0.0001s", "not a whole number of milliseconds"),
        ("1e3ms", "invalid duration"),
    ],
)
def test_rejects_with_a_helpful_message(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_duration(value)
    if message != "not a whole number of milliseconds":
        assert "500ms, 30s, 5m, 1h, 7d" in str(info.value)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (1, "1ms"), (1500, "1500ms"), (1000, "1s"), (90_000, "90s"), (60_000, "1m"),
     (3_600_000, "1h"), (5_400_000, "90m"), (86_400_000, "1d"), (604_800_000, "7d")],
)
def test_format_picks_the_shortest_exact_unit(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1s"])
def test_format_rejects_non_milliseconds(bad: object) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        format_duration(bad)  # type: ignore[arg-type]
