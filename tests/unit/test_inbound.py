"""Reading received frames (amqptasks.core.inbound): frames written by pamqp, the client library's codec."""

from __future__ import annotations

from datetime import UTC, datetime, timezone

import pamqp.frame
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from amqptasks.core.inbound import (
    HEARTBEAT,
    Ack,
    Delivery,
    FrameRouter,
    Passed,
    Reply,
    deliver_consumer_tag,
    read_confirms_and_replies,
)

TAG = "amqptasks-0123"


def deliver(channel: int, tag: str = TAG, delivery_tag: int = 1, redelivered: bool = False) -> bytes:
    method = commands.Basic.Deliver(consumer_tag=tag, delivery_tag=delivery_tag, redelivered=redelivered, exchange="", routing_key="q")
    return pamqp.frame.marshal(method, channel)


def content(channel: int, body: bytes, frame_size: int = 131072, **properties: object) -> bytes:
    header = pamqp.frame.marshal(ContentHeader(0, len(body), commands.Basic.Properties(**properties)), channel)  # type: ignore[arg-type]
    return header + b"".join(pamqp.frame.marshal(ContentBody(body[i : i + frame_size]), channel) for i in range(0, len(body), frame_size))


def message(channel: int, body: bytes, tag: str = TAG, delivery_tag: int = 1, frame_size: int = 131072, **properties: object) -> bytes:
    return deliver(channel, tag, delivery_tag) + content(channel, body, frame_size, **properties)


def other_frames(channel: int) -> bytes:
    return (
        pamqp.frame.marshal(commands.Basic.QosOk(), channel)
        + pamqp.frame.marshal(Heartbeat(), 0)
        + pamqp.frame.marshal(commands.Basic.Ack(delivery_tag=3), channel)
    )


def feed_in_pieces(router: FrameRouter, data: bytes, cuts: list[int]) -> list[Passed | Delivery]:
    out: list[Passed | Delivery] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        out += router.feed(data[start:cut])
        start = cut
    return out


def passed_bytes(items: list[Passed | Delivery]) -> bytes:
    return b"".join(item.data for item in items if isinstance(item, Passed))


# --- FrameRouter ----------------------------------------------------------------------------------


def test_frames_of_no_registered_consumer_pass_on_byte_for_byte() -> None:
    router = FrameRouter()
    data = other_frames(1) + message(1, b"not ours") + message(2, b"x", tag="other")
    router.take(1, "another-tag")
    assert passed_bytes(router.feed(data)) == data


def test_a_registered_consumers_delivery_is_taken_whole_and_in_order() -> None:
    router = FrameRouter()
    router.take(1, TAG)
    before, after = other_frames(1), other_frames(2)
    items = router.feed(before + message(1, b'{"a": 1}', delivery_tag=7, correlation_id="c") + after)
    assert [type(item) for item in items] == [Passed, Delivery, Passed]
    assert items[0] == Passed(before) and items[2] == Passed(after)
    taken = items[1]
    assert isinstance(taken, Delivery) and (taken.channel, taken.consumer_tag, taken.body) == (1, TAG, b'{"a": 1}')
    method = pamqp.frame.unmarshal(taken.method)[2]
    header = pamqp.frame.unmarshal(taken.header)[2]
    assert isinstance(method, commands.Basic.Deliver) and method.delivery_tag == 7
    assert isinstance(header, ContentHeader) and header.properties.correlation_id == "c"


def test_an_empty_body_and_a_body_over_many_frames() -> None:
    router = FrameRouter()
    router.take(3, TAG)
    big = bytes(range(256)) * 40
    items = router.feed(message(3, b"") + message(3, big, delivery_tag=2, frame_size=1000))
    assert [item.body for item in items if isinstance(item, Delivery)] == [b"", big]


def test_other_channels_may_interleave_with_a_delivery_being_taken() -> None:
    router = FrameRouter()
    router.take(1, TAG)
    body = b"y" * 3000
    frames = content(1, body, frame_size=1000)
    header_end = len(content(1, b""))
    interleaved = deliver(1) + frames[:header_end] + other_frames(2) + frames[header_end:]
    items = router.feed(interleaved)
    assert [type(item) for item in items] == [Passed, Delivery]
    assert items[0] == Passed(other_frames(2)) and isinstance(items[1], Delivery) and items[1].body == body


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=2500), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=12),
)
def test_any_split_of_the_stream_gives_the_same_items(bodies: list[bytes], cuts: list[int]) -> None:
    stream = other_frames(1)
    for tag, body in enumerate(bodies, start=1):
        stream += message(1, body, delivery_tag=tag, frame_size=700) + other_frames(2)
    whole = FrameRouter()
    whole.take(1, TAG)
    pieces = FrameRouter()
    pieces.take(1, TAG)
    expected = whole.feed(stream)
    got = feed_in_pieces(pieces, stream, cuts)
    assert [item.body for item in got if isinstance(item, Delivery)] == bodies
    assert passed_bytes(got) == passed_bytes(expected) == other_frames(1) + other_frames(2) * len(bodies)


def test_a_stream_that_is_not_frames_passes_on_untouched_for_good() -> None:
    version_mismatch = b"AMQP\x00\x00\x09\x01"
    router = FrameRouter()
    router.take(1, TAG)
    assert passed_bytes(router.feed(version_mismatch)) == version_mismatch
    assert router.passthrough
    assert router.feed(message(1, b"later")) == [Passed(message(1, b"later"))]
    corrupt = bytearray(message(1, b"z"))
    corrupt[len(deliver(1)) - 1] = 0  # the method frame's end octet
    fresh = FrameRouter()
    fresh.take(1, TAG)
    assert passed_bytes(fresh.feed(bytes(other_frames(1)) + bytes(corrupt))) == other_frames(1) + bytes(corrupt)


def test_a_released_channel_passes_its_deliveries_on() -> None:
    router = FrameRouter()
    router.take(1, TAG)
    first = message(1, b"abc")
    head = len(deliver(1)) + len(content(1, b""))  # the method and header frames, not the body's
    assert router.feed(first[:head]) == []
    router.release_channel(1)  # closed, say: the broker requeues what it had sent
    rest = first[head:] + message(1, b"again")
    assert passed_bytes(router.feed(rest)) == rest


def test_consumer_tag_of_a_deliver_frame_and_of_anything_else() -> None:
    assert deliver_consumer_tag(deliver(1, "t-1")) == "t-1"
    assert deliver_consumer_tag(pamqp.frame.marshal(commands.Basic.Ack(delivery_tag=1), 1)) is None
    assert HEARTBEAT == pamqp.frame.marshal(Heartbeat(), 0)


# --- read_confirms_and_replies ------------------------------------------------------------------------


def ack(tag: int, multiple: bool = False, channel: int = 3) -> bytes:
    return pamqp.frame.marshal(commands.Basic.Ack(delivery_tag=tag, multiple=multiple), channel)


def test_confirms_are_read_and_anything_else_is_left_alone() -> None:
    assert read_confirms_and_replies(ack(5), 3, None) == (len(ack(5)), [Ack(5, False)])
    run = ack(1, True) + ack(2**40)
    assert read_confirms_and_replies(run, 3, None) == (len(run), [Ack(1, True), Ack(2**40, False)])
    nack = pamqp.frame.marshal(commands.Basic.Nack(delivery_tag=5), 3)
    for other in (b"", ack(5, channel=4), ack(5)[:-1], nack, pamqp.frame.marshal(Heartbeat(), 0), ack(5)[:-1] + b"\x00"):
        assert read_confirms_and_replies(other, 3, None) == (0, [])
    # What comes after something else is left too: the client library reads from there.
    assert read_confirms_and_replies(ack(1) + nack + ack(2), 3, None) == (len(ack(1)), [Ack(1, False)])
    assert read_confirms_and_replies(ack(1) + ack(2)[:10], 3, None) == (len(ack(1)), [Ack(1, False)])


def test_replies_are_read_with_their_correlation_id_whatever_properties_come_before() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    plain = message(3, b'{"r": 1}', correlation_id="id-1")
    full = message(
        3, b"body", tag=TAG, content_type="application/json", content_encoding="utf-8",
        headers={"v": 1, "nested": {"a": [1, "b"]}}, delivery_mode=1, priority=4, correlation_id="id-2",
        reply_to="x", message_id="m", timestamp=when,
    )
    none = message(3, b"no id")
    data = ack(1) + plain + full + ack(2) + none
    assert read_confirms_and_replies(data, 3, TAG) == (
        len(data),
        [Ack(1, False), Reply("id-1", b'{"r": 1}'), Reply("id-2", b"body"), Ack(2, False), Reply(None, b"no id")],
    )


def test_a_reply_is_read_only_whole_and_only_for_the_reply_consumer() -> None:
    reply = message(3, b"r" * 3000, frame_size=1000, correlation_id="c")
    for cut in (5, len(deliver(3)), len(deliver(3)) + 10, len(reply) - 1):
        assert read_confirms_and_replies(ack(1) + reply[:cut], 3, TAG) == (len(ack(1)), [Ack(1, False)])
    assert read_confirms_and_replies(reply, 3, TAG)[1] == [Reply("c", b"r" * 3000)]
    assert read_confirms_and_replies(reply, 3, "another") == (0, [])
    assert read_confirms_and_replies(reply, 3, None) == (0, [])
    assert read_confirms_and_replies(message(4, b"r"), 3, TAG) == (0, [])


def test_content_frames_out_of_place_turn_the_router_into_a_pass_through() -> None:
    short_header = bytes((2, 0, 1, 0, 0, 0, 4)) + b"\x00\x3c\x00\x00" + b"\xce"  # 4 bytes: no body size
    body_first = pamqp.frame.marshal(ContentBody(b"b"), 1)
    for wrong in (short_header, body_first):
        router = FrameRouter()
        router.take(1, TAG)
        items = router.feed(deliver(1) + wrong + message(1, b"after"))  # no exception escapes
        assert router.passthrough
        assert passed_bytes(items) == wrong + message(1, b"after")  # the deliver frame was taken already
