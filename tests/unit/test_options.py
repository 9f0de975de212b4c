"""Task and send option validation: wrong values fail at decoration time, with the fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from amqptasks.core.options import (
    NO_SEND_OPTIONS,
    SendOptions,
    TaskOptions,
    task_options,
    unsupported_send_options,
)
from amqptasks.errors import ConfigurationError


def test_defaults_follow_celery() -> None:
    options = task_options("tasks.add", {})
    assert options == TaskOptions(name="tasks.add")
    assert options.max_retries == 3 and options.retry_backoff is False and options.retry_jitter is True
    assert options.retry_backoff_max == 600 and options.default_retry_delay == 180
    assert options.autoretry_for == () and options.backoff_base is None


def test_name_option_overrides_the_default_name() -> None:
    assert task_options("tasks.send_email", {"name": "emails.send"}).name == "emails.send"


def test_unknown_option_suggests_the_close_one() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown task option 'ignore_results'; did you mean 'ignore_result'"):
        task_options("t", {"ignore_results": True})


@pytest.mark.parametrize("name", ["acks_late", "serializer", "rate_limit", "time_limit", "base"])
def test_celery_options_we_do_not_support_say_why(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"task option {name!r} is not supported: "):
        task_options("t", {name: True})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": "q", "exchange": "e"}, "give either queue='q'"),
        ({"queue": "q", "routing_key": "k"}, "give either queue='q'"),
        ({"queue": ""}, "queue must not be empty"),
        ({"queue": 5}, "queue must be a string"),
        ({"queue": "q" * 256}, "longer than 255 bytes"),
        ({"ignore_result": "yes"}, "ignore_result must be True or False"),
        ({"bind": 1}, "bind must be True or False"),
        ({"priority": 256}, "priority must be an integer from 0 to 255"),
        ({"priority": True}, "priority must be an integer"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0 or None"),
        ({"retry_backoff": 0}, "retry_backoff must be True/False or seconds > 0"),
        ({"retry_backoff": "fast"}, "retry_backoff must be"),
        ({"retry_backoff_max": 0}, "retry_backoff_max must be seconds > 0"),
        ({"default_retry_delay": -1}, "default_retry_delay must be seconds >= 0"),
        ({"autoretry_for": (ValueError, "KeyError")}, "autoretry_for must hold exception classes"),
        ({"autoretry_for": "ValueError"}, "autoretry_for must be a tuple"),
        ({"expires": 0}, "expires must be seconds > 0"),
        ({"name": " padded"}, "must not be blank or start/end with whitespace"),
        ({"name": ""}, "name must not be empty"),
    ],
)
def test_bad_values_are_configuration_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task_options("tasks.t", options)


def test_error_names_the_task() -> None:
    with pytest.raises(ConfigurationError, match=r"task 'emails\.send': priority"):
        task_options("x", {"name": "emails.send", "priority": -1})


def test_autoretry_for_accepts_a_single_class_and_lists() -> None:
    assert task_options("t", {"autoretry_for": ValueError}).autoretry_for == (ValueError,)
    assert task_options("t", {"autoretry_for": [KeyError, OSError]}).autoretry_for == (KeyError, OSError)


def test_backoff_base() -> None:
    assert task_options("t", {"retry_backoff": True}).backoff_base == 1.0
    assert task_options("t", {"retry_backoff": 2.5}).backoff_base == 2.5


def test_options_are_frozen() -> None:
    options = task_options("t", {})
    with pytest.raises(AttributeError):
        options.queue = "other"  # type: ignore[misc]


def test_send_options_validate_routing_and_priority() -> None:
    with pytest.raises(ConfigurationError, match="send: give either queue="):
        SendOptions(queue="q", exchange="e")
    with pytest.raises(ConfigurationError, match="send: priority"):
        SendOptions(priority=300)


def test_countdown_and_eta_give_the_due_time() -> None:
    assert SendOptions(countdown=2).eta_ms(1_000) == 3_000
    assert SendOptions(countdown=0.0015).eta_ms(1_000) == 1_002  # rounded up: never early
    soon = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    now_ms = int(soon.timestamp() * 1000) - 3_600_000
    assert SendOptions(eta=soon).eta_ms(now_ms) == int(soon.timestamp() * 1000)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    assert SendOptions(eta=past).eta_ms(now_ms) == now_ms  # in the past: due now
    assert SendOptions(countdown=None, eta=None).eta_ms(5) is None


def test_bad_delays_are_refused_when_the_options_are_made() -> None:
    with pytest.raises(ConfigurationError, match="countdown must not be negative"):
        SendOptions(countdown=-1)
    with pytest.raises(ConfigurationError, match="aware datetime"):
        SendOptions(eta=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="not both"):
        SendOptions(countdown=1, eta=datetime.now(UTC))


def test_reserved_headers_are_refused() -> None:
    for name in ("task", "id", "retries", "eta", "expires", "amqptasks"):
        with pytest.raises(ConfigurationError, match=f"header {name!r} is reserved"):
            SendOptions(headers={name: "x"})
    with pytest.raises(ConfigurationError, match="header names must be strings"):
        SendOptions(headers={1: "x"})  # type: ignore[dict-item]


def test_header_values_the_wire_cannot_carry_are_refused_with_the_types_it_can() -> None:
    SendOptions(headers={"ratio": 0.5, "tags": ["a", 1], "meta": {"n": None}, "raw": b"x"})
    with pytest.raises(ConfigurationError, match=r"header 'ids' cannot be sent \(a set value\); header values must be str, int, float"):
        SendOptions(headers={"ids": {1, 2}})
    with pytest.raises(ConfigurationError, match=r"header 'n' cannot be sent \(the integer 18446744073709551616 does not fit in 64 bits"):
        SendOptions(headers={"n": [2**64]})
    with pytest.raises(ConfigurationError, match="longer than AMQP's 255 bytes"):
        SendOptions(headers={"k" * 256: 1})


def test_expires_in_seconds_timedelta_or_datetime() -> None:
    now_ms = 1_000_000
    assert SendOptions(expires=30).expires_ms(now_ms, None) == now_ms + 30_000
    assert SendOptions(expires=timedelta(minutes=1)).expires_ms(now_ms, None) == now_ms + 60_000
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    assert SendOptions(expires=moment).expires_ms(now_ms, None) == int(moment.timestamp() * 1000)
    with pytest.raises(ConfigurationError, match="aware datetime"):  # naive ones are ambiguous
        SendOptions(expires=datetime(2030, 1, 1)).expires_ms(now_ms, None)
    assert NO_SEND_OPTIONS.expires_ms(now_ms, 5) == now_ms + 5000  # the task's default
    assert NO_SEND_OPTIONS.expires_ms(now_ms, None) is None
    with pytest.raises(ConfigurationError, match="expires must be"):
        SendOptions(expires=-1)


def test_task_id_must_be_a_non_empty_string() -> None:
    with pytest.raises(ConfigurationError, match="task_id must be a non-empty string"):
        SendOptions(task_id="")
    with pytest.raises(ConfigurationError, match="task_id is longer than AMQP's 255 bytes"):
        SendOptions(task_id="é" * 128)


def test_unsupported_send_options_list_what_is_supported() -> None:
    error = unsupported_send_options({"link": None, "retry": True})
    assert "unsupported send option(s) link, retry" in str(error)
    assert "supported: queue, exchange, routing_key" in str(error)
    assert "did you mean 'priority'" in str(unsupported_send_options({"priorty": 1}))
