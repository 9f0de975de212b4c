"""pamqp (the codec under aio-pika and aiormq) made safe for whatever a client puts on the wire.

A worker must dead-letter any message it cannot process — it must never be stopped by one. pamqp
3.3 fails on some legal or merely unusual frames, and a frame it cannot decode closes the whole
connection *before* the message reaches us: the broker redelivers it first, and the queue is stuck
behind it forever. Found by the poison fuzz (tests/faults/test_poison.py):

* a shortstr property or a table key that is not UTF-8 (``UnicodeDecodeError``);
* a timestamp beyond ``datetime``'s range, e.g. ``2**63`` (``ValueError``);
* a negative decimal, decoded as unsigned and then impossible to re-encode;
* encoding an integer in -128..-1 (packed as an *unsigned* octet: ``struct.error``), so a header
  such as ``{"delta": -1}`` could be neither sent nor dead-lettered;
* encoding a float as 32 bits, so a float header changed value on a retry or dead-letter copy.

:func:`install` swaps in lenient versions of those functions (idempotent). Undecodable strings
arrive as ``bytes``, out-of-range timestamps as ``None``; :func:`encodable_headers` and
:func:`text` turn what still cannot be re-encoded into strings for dead-letter copies.
"""

from __future__ import annotations

import decimal as _decimal
import struct
from collections.abc import Mapping
from typing import Any

from pamqp import decode, encode

#: Header listing the names whose values a dead-letter copy had to rewrite as text.
H_REWRITTEN = "x-amqptasks-rewritten-headers"


def _short_str(value: bytes) -> tuple[int, str | bytes]:
    length = value[0]
    raw = bytes(value[1 : length + 1])
    try:
        return length + 1, raw.decode("utf-8")
    except UnicodeDecodeError:
        return length + 1, raw  # like pamqp's own long_str: the bytes, not an error


def _timestamp(value: bytes) -> tuple[int, Any]:
    try:
        return _ORIGINAL_TIMESTAMP(value)
    except (ValueError, OverflowError, OSError):
        return 8, None  # out of datetime's range: no timestamp rather than a dead connection


def _decimal_signed(value: bytes) -> tuple[int, _decimal.Decimal]:
    places = value[0]
    raw = struct.unpack(">i", value[1:5])[0]  # AMQP decimals are signed
    return 5, _decimal.Decimal(raw).scaleb(-places)


def _field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    length = struct.unpack(">I", value[0:4])[0]
    offset, end, data = 4, 4 + length, {}
    while offset < end:
        key_length = value[offset]
        offset += 1
        key = bytes(value[offset : offset + key_length]).decode("utf-8", "replace")
        offset += key_length
        consumed, result = decode.embedded_value(value[offset:])
        offset += consumed
        data[key] = result
    return end, data


def _table_integer(value: int) -> bytes:
    if -128 <= value < 0:
        return b"b" + struct.pack(">b", value)
    return _ORIGINAL_TABLE_INTEGER(value)


def _encode_table_value(value: Any) -> bytes:
    # pamqp writes floats as 32-bit ("f"): a float header on a retry or dead-letter copy would
    # change value (0.1 -> 0.10000000149...). Doubles, as core/frames.py writes them.
    if isinstance(value, float):
        return b"d" + encode.double(value)
    return _ORIGINAL_ENCODE_TABLE_VALUE(value)


_ORIGINAL_TIMESTAMP = decode.timestamp
_ORIGINAL_TABLE_INTEGER = encode.table_integer
_ORIGINAL_ENCODE_TABLE_VALUE = encode.encode_table_value


def install() -> None:
    """Use the lenient decoders and the fixed integer and float encoders in this process (idempotent)."""
    if decode.short_str is _short_str:
        return
    decode.short_str = _short_str
    decode.timestamp = _timestamp
    decode.decimal = _decimal_signed
    decode.field_table = _field_table
    decode.METHODS.update(shortstr=_short_str, timestamp=_timestamp, decimal=_decimal_signed, table=_field_table)
    decode.TABLE_MAPPING.update({b"T": _timestamp, b"D": _decimal_signed, b"F": _field_table})
    encode.table_integer = _table_integer
    encode.encode_table_value = _encode_table_value


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
    """``headers`` with every value pamqp cannot encode replaced by its ``repr`` (at most 1000
    characters), and the names of those listed in :data:`H_REWRITTEN`."""
    kept: dict[str, Any] = {}
    rewritten: list[str] = []
    for name, value in headers.items():
        key = _shortstr(str(name))  # table keys are shortstrs too
        try:
            encode.encode_table_value(value)
        except (TypeError, ValueError, OverflowError, struct.error):
            kept[key] = repr(value)[:1000]
            rewritten.append(key)
        else:
            kept[key] = value
    if rewritten:
        kept[H_REWRITTEN] = ", ".join(rewritten)[:1000]
    return kept
