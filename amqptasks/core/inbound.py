"""Reading the bytes a broker sends: whole AMQP frames, and the deliveries a worker takes itself.

The worker's consuming connection runs under aiormq, which moves every received frame through a
stream reader, a per-frame parse, a queue to the channel's task and a task per delivery: four
event-loop hand-offs before a task starts, a third of an RPC round trip on the benchmark machine.
:class:`FrameRouter` splits the byte stream into frames as it arrives and picks out the complete
deliveries (``basic.deliver``, its content header and body frames) for the consumers the worker
registered; every other frame passes on to aiormq, byte for byte, in order.

Pure: bytes in, :class:`Passed` runs and :class:`Delivery` items out. The adapter
(``aio/tap.py``) feeds aiormq the passed bytes and dispatches the deliveries.

Wire format: AMQP 0-9-1 section 4.2.3 (a frame is type, channel, size, payload, ``0xCE``) and
section 4.2.6 (content: a method, a header frame with the body size, then body frames).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from amqptasks.core.frames import (
    BASIC_ACK,
    BASIC_CLASS,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    encode_frame,
)

FRAME_HEARTBEAT = 8
END_OCTET = FRAME_END[0]  # as indexing bytes reads it
_FRAME_TYPES = (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT)
HEARTBEAT = encode_frame(FRAME_HEARTBEAT, 0, b"")

_FRAME_START = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_ID = struct.Struct(">HH")  # class, method
_BODY_SIZE = struct.Struct(">Q")  # in a content header, after class and weight
_ACK = struct.Struct(">HHQB")  # class, method, delivery tag, bits (multiple)
_UINT32 = struct.Struct(">I")
_BASIC_DELIVER = (BASIC_CLASS, 60)
_BASIC_ACK = (BASIC_CLASS, BASIC_ACK)
_HEADER_FLAGS_AT = 12  # class, weight, body size; then the property flags
# Property flags before correlation-id (bit 10), and how to step over each: content-type and
# content-encoding (shortstr), headers (table), delivery-mode and priority (octet).
_SHORTSTR, _TABLE, _OCTET = range(3)
_BEFORE_CORRELATION_ID = ((1 << 15, _SHORTSTR), (1 << 14, _SHORTSTR), (1 << 13, _TABLE), (1 << 12, _OCTET), (1 << 11, _OCTET))
_CORRELATION_ID = 1 << 10


@dataclass(frozen=True)
class Passed:
    """Bytes of whole frames that are not taken: they go on to the client library as they are."""

    data: bytes


@dataclass(frozen=True)
class Delivery:
    """A complete delivery for a registered consumer: the payloads of its frames."""

    channel: int
    consumer_tag: str
    method: bytes  # the basic.deliver frame, whole (the client library parses it)
    header: bytes  # the content header frame, whole
    body: bytes  # the body, joined from its frames


@dataclass(frozen=True)
class Ack:
    """A publisher confirm: ``basic.ack`` of ``tag`` (and all below it if ``multiple``)."""

    tag: int
    multiple: bool


@dataclass(frozen=True)
class Reply:
    """A delivery to a reply consumer: its correlation id (None if it has none) and body."""

    correlation_id: str | None
    body: bytes


@dataclass
class _Partial:
    consumer_tag: str
    method: bytes
    header: bytes = b""
    size: int = -1  # body size, once the header arrived
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


def deliver_consumer_tag(frame: bytes | bytearray | memoryview, start: int = 0) -> str | None:
    """The consumer tag of the ``basic.deliver`` method frame at ``start``, or None if it is not one."""
    payload = start + _FRAME_START.size
    if _METHOD_ID.unpack_from(frame, payload) != _BASIC_DELIVER:
        return None
    length = frame[payload + 4]
    raw = bytes(frame[payload + 5 : payload + 5 + length])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None  # not one of ours: ours are ASCII


class FrameRouter:
    """Splits a connection's received bytes into frames; takes the deliveries of registered
    ``(channel, consumer tag)`` pairs, passes the rest on.

    A stream that does not look like frames (a protocol header sent back on a version mismatch, a
    wrong end octet, content frames out of place) turns the router into a plain pass-through for good: the client library then
    reports the problem in its own words.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._taken: dict[int, set[str]] = {}
        self._partial: dict[int, _Partial] = {}  # channel -> the delivery being assembled
        self.passthrough = False

    def take(self, channel: int, consumer_tag: str) -> None:
        """From now on, deliveries to ``consumer_tag`` on ``channel`` come out as :class:`Delivery`."""
        self._taken.setdefault(channel, set()).add(consumer_tag)

    def release_channel(self, channel: int) -> None:
        """Stop taking deliveries on ``channel`` (closed); one half-received is dropped with it."""
        self._taken.pop(channel, None)
        self._partial.pop(channel, None)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Passed | Delivery]:
        """Whatever ``data`` completes, in stream order; an incomplete frame waits for more bytes."""
        if self.passthrough:
            return [Passed(bytes(data))]
        buffer = self._buffer
        buffer += data
        out: list[Passed | Delivery] = []
        size = len(buffer)
        pos = passed_from = 0
        while size - pos >= _FRAME_START.size:
            kind, channel, length = _FRAME_START.unpack_from(buffer, pos)
            if kind not in _FRAME_TYPES:  # not a frame stream (a protocol header?): hand it all over
                self.passthrough = True
                break
            end = pos + _FRAME_START.size + length + 1
            if end > size:
                break
            if buffer[end - 1] != END_OCTET:  # a corrupt stream: the client library says so
                self.passthrough = True
                break
            taken = self._take_frame(buffer, pos, end, kind, channel)
            if taken is False:  # this frame broke the rules (passthrough is set): it and the rest go on as they are
                break
            if taken is not None:
                if passed_from < pos:
                    out.append(Passed(bytes(buffer[passed_from:pos])))
                passed_from = end
                if isinstance(taken, Delivery):
                    out.append(taken)
            pos = end
        if self.passthrough:
            out.append(Passed(bytes(buffer[passed_from:])))
            self._buffer = bytearray()
            return out
        if passed_from < pos:
            out.append(Passed(bytes(buffer[passed_from:pos])))
        del buffer[:pos]
        return out

    def _take_frame(self, buffer: bytearray, start: int, end: int, kind: int, channel: int) -> Delivery | bool | None:
        """None: pass this frame on. True: taken, delivery not complete yet. A Delivery: completed.
        False: a protocol violation; ``passthrough`` is now set."""
        partial = self._partial.get(channel)
        if partial is not None:
            # Content frames follow their method on the same channel, never interleaved with others on it.
            payload = bytes(buffer[start + _FRAME_START.size : end - 1])
            if kind == FRAME_HEADER and partial.size < 0 and len(payload) >= _HEADER_FLAGS_AT:
                partial.header = bytes(buffer[start:end])
                partial.size = _BODY_SIZE.unpack_from(payload, 4)[0]
            elif kind == FRAME_BODY and partial.size >= 0:
                partial.parts.append(payload)
                partial.received += len(payload)
            else:  # a protocol violation (never from a broker): stop taking anything, guess nothing
                self.passthrough = True
                return False
            if partial.size >= 0 and partial.received >= partial.size:
                del self._partial[channel]
                body = partial.parts[0] if len(partial.parts) == 1 else b"".join(partial.parts)
                return Delivery(channel, partial.consumer_tag, partial.method, partial.header, body)
            return True
        if kind != FRAME_METHOD or channel not in self._taken or end - start < _FRAME_START.size + 5:
            return None
        tag = deliver_consumer_tag(buffer, start)
        if tag is None or tag not in self._taken[channel]:
            return None
        self._partial[channel] = _Partial(tag, bytes(buffer[start:end]))
        return True


def read_confirms_and_replies(
    data: bytes | bytearray | memoryview, channel: int, reply_tag: str | None
) -> tuple[int, list[Ack | Reply]]:
    """What a producer can settle itself from the start of ``data``: confirms (``basic.ack``) on
    ``channel``, and complete deliveries to its reply consumer ``reply_tag`` there.

    Returns the bytes those take up and the items in order; it stops at the first frame that is
    anything else or not complete (0 bytes: the caller lets its client library read)."""
    size = len(data)
    pos = 0
    items: list[Ack | Reply] = []
    while size - pos >= _FRAME_START.size:
        kind, number, length = _FRAME_START.unpack_from(data, pos)
        end = pos + _FRAME_START.size + length + 1
        if kind != FRAME_METHOD or number != channel or end > size or data[end - 1] != END_OCTET or length < 4:
            break
        method = _METHOD_ID.unpack_from(data, pos + _FRAME_START.size)
        if method == _BASIC_ACK and length == _ACK.size:
            _, _, tag, bits = _ACK.unpack_from(data, pos + _FRAME_START.size)
            items.append(Ack(tag, bool(bits & 1)))
            pos = end
            continue
        if reply_tag is None or method != _BASIC_DELIVER or deliver_consumer_tag(data, pos) != reply_tag:
            break
        read = _read_content(data, end, channel)
        if read is None:
            break
        pos, reply = read
        items.append(reply)
    return pos, items


def _read_content(data: bytes | bytearray | memoryview, pos: int, channel: int) -> tuple[int, Reply] | None:
    """The header and body frames at ``pos``, if all there: (where they end, the reply)."""
    header = _payload_at(data, pos, FRAME_HEADER, channel)
    if header is None:
        return None
    pos, payload = header
    try:
        body_size = _BODY_SIZE.unpack_from(payload, 4)[0]
        correlation_id = _correlation_id(payload)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None  # the client library reads what this does not
    parts: list[bytes] = []
    received = 0
    while received < body_size:
        body = _payload_at(data, pos, FRAME_BODY, channel)
        if body is None:
            return None
        pos, part = body
        parts.append(part)
        received += len(part)
    return pos, Reply(correlation_id, b"".join(parts))


def _payload_at(data: bytes | bytearray | memoryview, pos: int, kind: int, channel: int) -> tuple[int, bytes] | None:
    """(where it ends, its payload) of the whole ``kind`` frame on ``channel`` at ``pos``, else None."""
    if len(data) - pos < _FRAME_START.size:
        return None
    found, number, length = _FRAME_START.unpack_from(data, pos)
    end = pos + _FRAME_START.size + length + 1
    if found != kind or number != channel or end > len(data) or data[end - 1] != END_OCTET:
        return None
    return end, bytes(data[pos + _FRAME_START.size : end - 1])


def _correlation_id(header: bytes) -> str | None:
    """The correlation-id property of a content header payload (None if it has none)."""
    (flags,) = struct.unpack_from(">H", header, _HEADER_FLAGS_AT)
    if flags & 1:  # a second flags word: not in the basic class; let the library decide
        raise struct.error("more property flags")
    if not flags & _CORRELATION_ID:
        return None
    pos = _HEADER_FLAGS_AT + 2
    for flag, kind in _BEFORE_CORRELATION_ID:
        if flags & flag:
            if kind == _SHORTSTR:
                pos += 1 + header[pos]
            elif kind == _TABLE:
                pos += 4 + _UINT32.unpack_from(header, pos)[0]
            else:
                pos += 1
    length = header[pos]
    if pos + 1 + length > len(header):
        raise struct.error("correlation-id past the end")
    return header[pos + 1 : pos + 1 + length].decode("utf-8")
