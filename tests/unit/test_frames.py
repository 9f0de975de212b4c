"""The hand-written publish frames (amqptasks.core.frames), read back with pamqp as the oracle."""

from __future__ import annotations

import collections
import enum
import struct
from datetime import UTC, datetime, timezone
from decimal import Decimal
from typing import Any

import pamqp.frame
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqptasks.core.envelope import Properties, TaskMessage, encode_task
from amqptasks.core.frames import encode_publish, header_value_problem


def read_frames(data: bytes) -> list[tuple[int, Any]]:
    frames = []
    while data:
        consumed, channel, frame = pamqp.frame.unmarshal(data)
        frames.append((channel, frame))
        data = data[consumed:]
    return frames


def check_publish(data: bytes, channel: int, exchange: str, routing_key: str, body: bytes, props: Properties, frame_max: int) -> None:
    frames = read_frames(data)
    assert all(number == channel for number, _ in frames)
    method, header, *bodies = (frame for _, frame in frames)
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory, method.immediate) == (exchange, routing_key, True, False)
    assert isinstance(header, ContentHeader) and header.body_size == len(body)
    read = header.properties
    assert read.content_type == props.content_type and read.delivery_mode == props.delivery_mode
    assert read.message_id == props.message_id and read.headers == dict(props.headers)
    assert (read.correlation_id, read.reply_to, read.priority) == (props.correlation_id, props.reply_to, props.priority)
    assert (read.timestamp.timestamp() if read.timestamp else None) == props.timestamp
    assert all(isinstance(part, ContentBody) and len(part.value) <= frame_max - 8 for part in bodies)
    assert b"".join(part.value for part in bodies) == body


def test_a_task_message_as_the_producers_send_it() -> None:
    body, props = encode_task(
        TaskMessage(id="id-1", task="tasks.add", args=(3, 4), reply_to="amq.rabbitmq.reply-to", retries=2, eta_ms=1_700_000_000_123),
        timestamp=1_700_000_000,
    )
    data = encode_publish(7, "", "celery", body, props, 131072)
    assert data is not None
    check_publish(data, 7, "", "celery", body, props, 131072)


texts = st.text(max_size=40)
scalars = st.one_of(
    st.text(max_size=60), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.none(),
    st.binary(max_size=20),
)
header_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8
)


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 2047),
    exchange=texts,
    routing_key=texts,
    body=st.binary(max_size=3000),
    frame_max=st.integers(9, 1200) | st.just(131072),
    message_id=texts,
    headers=st.dictionaries(st.text(max_size=20), header_values, max_size=6),
    correlation_id=st.none() | texts,
    reply_to=st.none() | texts,
    priority=st.none() | st.integers(0, 255),
    timestamp=st.none() | st.integers(0, 2**32 - 1),  # pamqp reads larger ones as milliseconds
    delivery_mode=st.sampled_from([1, 2]),
)
def test_any_message_reads_back_as_written(
    channel: int, exchange: str, routing_key: str, body: bytes, frame_max: int, message_id: str, headers: dict[str, Any],
    correlation_id: str | None, reply_to: str | None, priority: int | None, timestamp: int | None, delivery_mode: int,
) -> None:
    props = Properties(
        message_id=message_id, headers=headers, correlation_id=correlation_id, reply_to=reply_to, priority=priority,
        timestamp=timestamp, delivery_mode=delivery_mode,
    )
    data = encode_publish(channel, exchange, routing_key, body, props, frame_max)
    assert data is not None
    check_publish(data, channel, exchange, routing_key, body, props, frame_max)


def test_values_it_does_not_write_are_left_to_the_client_library() -> None:
    def props(**kw: Any) -> Properties:
        return Properties(**{"message_id": "m", "headers": {}, **kw})

    for odd in (
        props(headers={"when": object()}),
        props(headers={"nested": {"a": {1, 2}}}),
        props(headers={"list": [Decimal("NaN")]}),
        props(headers={"big": 2**63}),
        props(headers={"keys": {1: "a"}}),
        props(headers={"x" * 256: 1}),
        props(message_id="m" * 256),
        props(priority=256),
        props(headers={"bad": "\udc80"}),
    ):
        assert encode_publish(1, "", "q", b"{}", odd, 131072) is None
    assert encode_publish(1, "e" * 256, "q", b"{}", props(), 131072) is None


def test_what_a_header_value_cannot_carry_is_named() -> None:
    assert header_value_problem({"a": [1, 2.5, None, b"x", {"b": True}, datetime.now(UTC), Decimal("-1.25")]}) is None
    assert header_value_problem({1, 2}) == "a set value"
    assert header_value_problem([1, {"x": Decimal("1E-300")}]).startswith("the decimal 1E-300 has no AMQP form")
    assert header_value_problem(2**64) == "the integer 18446744073709551616 does not fit in 64 bits"
    assert header_value_problem({3: "a"}) == "the key 3 is not a string of at most 255 bytes"
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert header_value_problem(deep) == "it is nested too deeply"


def test_tuples_enums_mappings_datetimes_and_decimals_travel_as_their_amqp_types() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    when = datetime(2026, 11, 25, 4, 5, 6, tzinfo=UTC)
    headers = {
        "t": (1, "a"), "c": Colour.RED, "s": Size.BIG, "m": collections.OrderedDict(a=1), "when": when,
        "naive": when.replace(tzinfo=None), "price": Decimal("12.50"), "whole": Decimal(7), "gm": when.utctimetuple(),
    }
    data = encode_publish(1, "", "q", b"{}", Properties(message_id="m", headers=headers), 131072)
    assert data is not None
    assert read_frames(data)[1][1].properties.headers == {
        "t": [1, "a"], "c": "red", "s": 3, "m": {"a": 1}, "when": when, "naive": when, "price": Decimal("12.50"),
        "whole": Decimal(7), "gm": when,
    }
    # Negative decimals: scale octet, then a signed 32-bit integer (plain pamqp reads it unsigned).
    negative = encode_publish(1, "", "q", b"{}", Properties(message_id="m", headers={"d": Decimal("-12.50")}), 131072)
    assert negative is not None and b"\x01dD\x02" + struct.pack(">i", -1250) in negative


def test_no_frame_limit_sends_the_body_in_one_frame() -> None:
    body = b"x" * 500_000
    data = encode_publish(1, "", "q", body, Properties(message_id="m", headers={}), 0)
    assert data is not None
    assert len(read_frames(data)) == 3
