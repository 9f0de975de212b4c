"""The AMQP 0-9-1 frames of one ``basic.publish``, encoded by hand for the producers' hot path.

The client libraries encode a publish field by field through generic, type-dispatching encoders
(pamqp's took ~30 % of the async producer's CPU per message), and each has gaps: pika cannot
encode a float header at all, pamqp writes floats as 32-bit. Our messages use a handful of
properties, so this module writes them with ``struct`` directly, header values of the types
:data:`HEADER_TYPES` (what ``send(headers=...)`` accepts, core/options.py): str, int (64-bit),
float (as a double), bool, None, bytes, datetime (whole seconds), Decimal, and lists/tuples and
str-keyed mappings of those.
:func:`encode_publish` returns ``None`` for anything else (or a short string over 255 bytes), and
the adapter then lets its library encode that message, and report the error in its own words.

Wire format: AMQP 0-9-1 section 4.2.3 (frames) and the ``basic`` class of the spec (method 60.40,
property flags in declaration order, bit 15 first).
"""

from __future__ import annotations

import calendar
import struct
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from amqptasks.core.envelope import Properties

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type (1) + channel (2) + size (4) before the payload, the end octet after
BASIC_CLASS = 60
BASIC_PUBLISH = 40
BASIC_ACK = 80

# Property flags of the basic class, for the properties Properties carries.
_CONTENT_TYPE = 1 << 15
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_REPLY_TO = 1 << 9
_MESSAGE_ID = 1 << 7
_TIMESTAMP = 1 << 6

_FRAME_START = struct.Struct(">BHI")
_METHOD_START = struct.Struct(">HHH")  # class, method, reserved-1 (the ticket)
_HEADER_START = struct.Struct(">HHQ")  # class, weight, body size (the property flags follow)
_UINT16 = struct.Struct(">H")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_DOUBLE = struct.Struct(">d")


HEADER_TYPES = (str, int, float, bool, type(None), bytes, bytearray, list, tuple, Mapping, datetime, Decimal)


def header_value_problem(value: Any) -> str | None:
    """Why ``value`` cannot travel as a header value (see :data:`HEADER_TYPES`), or None."""
    try:
        _field_value(value)
    except RecursionError:
        return "it is nested too deeply"
    except (_Unsupported, ValueError, OverflowError, struct.error):
        return _first_problem(value)
    return None


def _first_problem(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"the integer {value} does not fit in 64 bits"
    if isinstance(value, list | tuple):
        return next(_first_problem(item) for item in value if header_value_problem(item))
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str) or len(name.encode(errors="replace")) > 255:
                return f"the key {name!r} is not a string of at most 255 bytes"
            if header_value_problem(item):
                return _first_problem(item)
    if isinstance(value, str):
        return "the text is not valid Unicode (a lone surrogate?)"
    if isinstance(value, Decimal):
        return f"the decimal {value} has no AMQP form (at most 255 decimal places, digits within 32 bits)"
    return f"a {type(value).__name__} value"


class _Unsupported(Exception):
    """A value this encoder leaves to the client library."""


def _shortstr(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise _Unsupported  # the library reports it in its own words
    return bytes((len(data),)) + data


def _field_value(value: Any) -> bytes:
    # isinstance, not type(): IntEnum / StrEnum members and dict subclasses are values like any other.
    if isinstance(value, str):
        data = str.encode(value)
        return b"S" + _UINT32.pack(len(data)) + data
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _INT32.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _INT64.pack(value)
        raise _Unsupported
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if value is None:
        return b"V"
    if isinstance(value, bytes | bytearray):
        return b"x" + _UINT32.pack(len(value)) + bytes(value)
    if isinstance(value, time.struct_time):  # a tuple too, but a point in time (UTC) to the libraries
        return b"T" + _UINT64.pack(calendar.timegm(value))
    if isinstance(value, list | tuple):
        data = b"".join(_field_value(item) for item in value)
        return b"A" + _UINT32.pack(len(data)) + data
    if isinstance(value, Mapping):
        return b"F" + _table(value)
    if isinstance(value, datetime):  # seconds since the epoch; a naive datetime is taken as UTC
        aware = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
        return b"T" + _UINT64.pack(int(aware.timestamp()))
    if isinstance(value, Decimal) and value.is_finite():
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite
        scale = max(0, -exponent)
        digits = int(value.scaleb(scale))
        if scale <= 255 and -(2**31) <= digits < 2**31:
            return b"D" + bytes((scale,)) + _INT32.pack(digits)
    raise _Unsupported


def _table(headers: Mapping[str, Any]) -> bytes:
    parts = []
    for name, value in headers.items():
        if not isinstance(name, str):
            raise _Unsupported
        parts.append(_shortstr(name) + _field_value(value))
    data = b"".join(parts)
    return _UINT32.pack(len(data)) + data


def encode_table(headers: Mapping[str, Any]) -> bytes | None:
    """``headers`` as an AMQP field table (length first), or None for a value this module leaves
    to the client library (see :func:`header_value_problem`)."""
    try:
        return _table(headers)
    except (_Unsupported, ValueError, OverflowError, struct.error, RecursionError):
        return None


def encode_frame(kind: int, channel: int, payload: bytes) -> bytes:
    """One frame: type, channel, size, ``payload``, end octet."""
    return _FRAME_START.pack(kind, channel, len(payload)) + payload + FRAME_END


def _octet(value: int) -> bytes:
    return bytes((value,))


# The properties Properties carries, in the order of their flag bits (the order on the wire).
_PROPERTIES: tuple[tuple[int, str, Callable[[Any], bytes]], ...] = (
    (_CONTENT_TYPE, "content_type", _shortstr),
    (_HEADERS, "headers", _table),
    (_DELIVERY_MODE, "delivery_mode", _octet),
    (_PRIORITY, "priority", _octet),
    (_CORRELATION_ID, "correlation_id", _shortstr),
    (_REPLY_TO, "reply_to", _shortstr),
    (_MESSAGE_ID, "message_id", _shortstr),
    (_TIMESTAMP, "timestamp", _UINT64.pack),
)


def encode_properties(properties: Properties) -> bytes | None:
    """The property flags and property list of a content header for ``properties``, or ``None``
    when a value is outside what this encoder writes (see the module docstring)."""
    try:
        flags = 0
        fields: list[bytes] = []
        for flag, name, encode in _PROPERTIES:
            value = getattr(properties, name)
            if value is not None:
                flags |= flag
                fields.append(encode(value))
    except (_Unsupported, ValueError, OverflowError, struct.error, UnicodeError):
        return None
    return _UINT16.pack(flags) + b"".join(fields)


def encode_publish(
    channel: int, exchange: str, routing_key: str, body: bytes, properties: Properties, frame_max: int, *, mandatory: bool = True
) -> bytes | None:
    """Method, content header and body frames of one publish on ``channel``, or ``None`` when a
    property or header value is outside what this encoder writes (see the module docstring).

    ``frame_max`` is the connection's negotiated maximum frame size (0: none): longer bodies are split."""
    try:
        method = _METHOD_START.pack(BASIC_CLASS, BASIC_PUBLISH, 0) + _shortstr(exchange) + _shortstr(routing_key)
    except (_Unsupported, UnicodeError):
        return None
    method += b"\x01" if mandatory else b"\x00"
    properties_data = encode_properties(properties)
    if properties_data is None:
        return None
    header = _HEADER_START.pack(BASIC_CLASS, 0, len(body)) + properties_data
    parts = [encode_frame(FRAME_METHOD, channel, method), encode_frame(FRAME_HEADER, channel, header)]
    size = frame_max - FRAME_OVERHEAD if frame_max > FRAME_OVERHEAD else max(1, len(body))  # 0: no limit
    parts.extend(encode_frame(FRAME_BODY, channel, body[i : i + size]) for i in range(0, len(body), size))
    return b"".join(parts)


_ACK_PAYLOAD = struct.Struct(">HHQB")  # class, method, delivery tag, bits (multiple)


def encode_ack(channel: int, tag: int, multiple: bool = False) -> bytes:
    """One ``basic.ack`` frame on ``channel``."""
    return encode_frame(FRAME_METHOD, channel, _ACK_PAYLOAD.pack(BASIC_CLASS, BASIC_ACK, tag, int(multiple)))
