"""Lenient decoding and faithful encoding of message properties, on our own connections only.

A worker must dead-letter any message it cannot process — it must never be stopped by one. pamqp
(the codec under aio-pika and aiormq) fails on some legal or merely unusual frames, and a frame it
cannot decode closes the whole connection *before* the message reaches us: the broker redelivers
it first, and the queue is stuck behind it forever. Found by the poison fuzz
(tests/faults/test_poison.py):

* a shortstr property or a table key that is not UTF-8 (``UnicodeDecodeError``; pamqp 3 and 4);
* a timestamp beyond ``datetime``'s range, e.g. ``2**63`` (``ValueError``; pamqp 3 and 4);
* a negative decimal, decoded as unsigned and then impossible to re-encode (pamqp 3 only);
* encoding an integer in -128..-1 (``struct.error``; pamqp 3 only), so a header such as
  ``{"delta": -1}`` could be neither sent nor dead-lettered;
* encoding a float as 32 bits, so a float header changed value on a retry or dead-letter copy.

Nothing here changes pamqp for anyone else in the process: :func:`content_header` decodes the
header frames of the deliveries the tap takes (aio/tap.py: our worker's consuming connection),
with pamqp's own decoder first where pamqp is 4 or newer and our lenient one when that fails
(always on pamqp 3, whose decimals are wrong without failing); :class:`CopyProperties` writes
the headers of the copies we publish with core/frames.py's encoder. Undecodable strings arrive as
``bytes``, out-of-range timestamps as ``None``; :func:`encodable_headers` and :func:`text` turn
what still cannot be re-encoded into strings for dead-letter copies.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from decimal import Decimal
from importlib.metadata import version
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp import decode
from pamqp.header import ContentHeader

from amqptasks.core.frames import encode_table, header_value_problem

#: Header listing the names whose values a dead-letter copy had to rewrite as text.
H_REWRITTEN = "x-amqptasks-rewritten-headers"

#: pamqp before 4 decodes negative decimals as unsigned without failing: never trust its decoder.
PAMQP_3 = int(version("pamqp").split(".")[0]) < 4

_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_INT32 = struct.Struct(">i")
_HEADER_PREFIX = 7 + 12  # frame type, channel, size; then class id, weight, body size


def content_header(frame: bytes | memoryview) -> ContentHeader:
    """The content header in ``frame`` (one whole header frame), decoded whatever it carries."""
    if not PAMQP_3:
        try:
            header = pamqp.frame.unmarshal(bytes(frame))[2]
        except Exception:  # anything pamqp refuses goes to our lenient decoder
            header = None
        if isinstance(header, ContentHeader):
            return header
    return lenient_content_header(frame)


def lenient_content_header(frame: bytes | memoryview) -> ContentHeader:
    """Decode a content header frame with the lenient rules above (raises ValueError on a frame
    that is not a content header at all)."""
    data = bytes(frame)
    if len(data) < _HEADER_PREFIX + 2 or data[0] != 2:
        raise ValueError("not a content header frame")
    body_size = _UINT64.unpack_from(data, 11)[0]
    pos = _HEADER_PREFIX
    flags = 0
    shift = 0
    while True:  # property flags: 16-bit words, the low bit says another word follows
        word = _UINT16.unpack_from(data, pos)[0]
        pos += 2
        flags |= (word & 0xFFFE) << shift
        shift += 16
        if not word & 1:
            break
    properties = spec.Basic.Properties()
    for name in properties.__slots__:
        if not flags & properties.flags[name]:
            continue
        kind = getattr(spec.Basic.Properties, "_" + name)
        pos, value = _PROPERTY_DECODERS[kind](data, pos)
        setattr(properties, name, value)
    return ContentHeader(body_size=body_size, properties=properties)


def _short_str(data: bytes, pos: int) -> tuple[int, str | bytes]:
    end = pos + 1 + data[pos]
    raw = data[pos + 1 : end]
    try:
        return end, raw.decode("utf-8")
    except UnicodeDecodeError:
        return end, raw  # like pamqp's own long_str: the bytes, not an error


def _octet(data: bytes, pos: int) -> tuple[int, int]:
    return pos + 1, data[pos]


def _timestamp(data: bytes, pos: int) -> tuple[int, Any]:
    try:
        return pos + 8, decode.timestamp(data[pos : pos + 8])[1]
    except (ValueError, OverflowError, OSError):
        return pos + 8, None  # out of datetime's range: no timestamp rather than a dead connection


def _decimal(data: bytes, pos: int) -> tuple[int, Decimal]:
    places = data[pos]
    raw = _INT32.unpack_from(data, pos + 1)[0]  # AMQP decimals are signed
    return pos + 5, Decimal(raw).scaleb(-places)


def _table(data: bytes, pos: int) -> tuple[int, dict[str, Any]]:
    end = pos + 4 + _UINT32.unpack_from(data, pos)[0]
    pos += 4
    table: dict[str, Any] = {}
    while pos < end:
        key_end = pos + 1 + data[pos]
        key = data[pos + 1 : key_end].decode("utf-8", "replace")
        pos, table[key] = _field_value(data, key_end)
    return end, table


def _array(data: bytes, pos: int) -> tuple[int, list[Any]]:
    end = pos + 4 + _UINT32.unpack_from(data, pos)[0]
    pos += 4
    items: list[Any] = []
    while pos < end:
        pos, value = _field_value(data, pos)
        items.append(value)
    return end, items


_NESTED: dict[bytes, Callable[[bytes, int], tuple[int, Any]]] = {
    b"T": _timestamp, b"D": _decimal, b"F": _table, b"A": _array,
}


def _field_value(data: bytes, pos: int) -> tuple[int, Any]:
    kind = data[pos : pos + 1]
    nested = _NESTED.get(kind)
    if nested is not None:
        return nested(data, pos + 1)
    stock = decode.TABLE_MAPPING.get(kind)  # the simple types: exactly as pamqp decodes them
    if stock is None:
        raise ValueError(f"unknown field type {kind!r}")
    consumed, value = stock(data[pos + 1 :])
    return pos + 1 + consumed, value


_PROPERTY_DECODERS: dict[str, Callable[[bytes, int], tuple[int, Any]]] = {
    "shortstr": _short_str, "octet": _octet, "table": _table, "timestamp": _timestamp,
}


class CopyProperties(spec.Basic.Properties):
    """pamqp's Basic.Properties whose headers table is written by core/frames.py: integers in
    -128..-1 encode (pamqp 3 fails on them), floats stay doubles (pamqp writes 32 bits), bytes
    encode (pamqp refuses them). For our copies (worker/copies.py) and for the messages pamqp
    encodes for us (aio/outbox.py). ``encode_property`` is pamqp's public method; per object,
    pamqp's own encoder is untouched for everyone else."""

    def encode_property(self, name: str, value: Any) -> bytes:
        if name == "headers":
            table = encode_table(value)
            if table is not None:
                return table
        return bytes(super().encode_property(name, value))


def text(value: Any) -> str | None:
    """A property value as text pamqp can encode as a shortstr: UTF-8, at most 255 bytes
    (``None`` stays ``None``). Replacement characters take 3 bytes, so bytes are cut after decoding."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    return _shortstr(value)


def _shortstr(value: str) -> str:
    encoded = value.encode("utf-8", "replace")
    if len(encoded) <= 255:
        return value
    return encoded[:255].decode("utf-8", "ignore")  # cut at a character boundary


def encodable_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` with every value core/frames.py cannot encode (:class:`CopyProperties`) replaced by its ``repr`` (at most 1000
    characters), and the names of those listed in :data:`H_REWRITTEN`."""
    kept: dict[str, Any] = {}
    rewritten: list[str] = []
    for name, value in headers.items():
        key = _shortstr(str(name))  # table keys are shortstrs too
        if header_value_problem(value) is None:
            kept[key] = value
        else:
            kept[key] = repr(value)[:1000]
            rewritten.append(key)
    if rewritten:
        kept[H_REWRITTEN] = ", ".join(rewritten)[:1000]
    return kept
