"""Lenient decoding and faithful encoding on our own connections (aio/wire.py), pamqp untouched."""

from __future__ import annotations

import datetime
import struct
from decimal import Decimal

import pamqp.exceptions
import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp import decode, encode
from pamqp.header import ContentHeader

from amqptasks.aio import wire

CONTENT_TYPE, HEADERS, MESSAGE_ID, TIMESTAMP = 0x8000, 0x2000, 0x0080, 0x0040


def header_frame(flags: int, properties: bytes, body_size: int = 3) -> bytes:
    payload = struct.pack(">HHQH", 60, 0, body_size, flags) + properties
    return b"\x02" + struct.pack(">HI", 1, len(payload)) + payload + b"\xce"


def shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def table(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(shortstr(key) + value for key, value in entries)
    return struct.pack(">I", len(body)) + body


def test_a_shortstr_that_is_not_utf8_decodes_to_bytes() -> None:
    frame = header_frame(CONTENT_TYPE | MESSAGE_ID, shortstr(b"\xff\xfe") + shortstr("caf\u00e9".encode()))
    with pytest.raises((UnicodeDecodeError, pamqp.exceptions.UnmarshalingException)):  # what pamqp does with it: the connection would close
        pamqp.frame.unmarshal(frame)
    header = wire.content_header(frame)
    assert header.body_size == 3
    assert header.properties.content_type == b"\xff\xfe" and header.properties.message_id == "caf\u00e9"


def test_a_timestamp_out_of_range_decodes_to_none() -> None:
    assert wire.content_header(header_frame(TIMESTAMP, struct.pack(">Q", 2**63))).properties.timestamp is None
    when = wire.content_header(header_frame(TIMESTAMP, struct.pack(">Q", 1_700_000_000))).properties.timestamp
    assert when == datetime.datetime.fromtimestamp(1_700_000_000, tz=datetime.UTC)


def test_negative_decimals_decode_signed() -> None:
    minus_one = b"D\x00" + struct.pack(">i", -1)
    frame = header_frame(HEADERS, table((b"d", b"D\x02" + struct.pack(">i", -505)), (b"a", b"A" + struct.pack(">I", 6) + minus_one)))
    assert wire.content_header(frame).properties.headers == {"d": Decimal("-5.05"), "a": [Decimal(-1)]}


def test_a_table_key_that_is_not_utf8_decodes_with_replacement() -> None:
    frame = header_frame(HEADERS, table((b"k\xff", b"S" + struct.pack(">I", 1) + b"v")))
    assert wire.content_header(frame).properties.headers == {"k\ufffd": "v"}


def test_an_ordinary_header_decodes_as_pamqp_decodes_it() -> None:
    properties = spec.Basic.Properties(
        content_type="application/json", headers={"n": -200, "f": 0.5, "s": "x", "l": [1, "a", True], "t": {"x": None}},
        message_id="m", timestamp=datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC), delivery_mode=2, priority=3,
    )
    frame = pamqp.frame.marshal(ContentHeader(body_size=7, properties=properties), 1)
    stock = pamqp.frame.unmarshal(frame)[2]
    ours = wire.lenient_content_header(frame)
    assert ours.body_size == stock.body_size == 7
    assert {n: getattr(ours.properties, n) for n in ours.properties.__slots__} == {
        n: getattr(stock.properties, n) for n in stock.properties.__slots__
    }


@pytest.mark.parametrize("value", [-1, -128, -129, 127, 128, -(2**40), 0.1, [2.5, -1], {"x": Decimal("-5.05")}])
def test_copies_encode_every_header_value_faithfully(value: object) -> None:
    properties = wire.CopyProperties(headers={"v": value}, message_id="m")
    frame = pamqp.frame.marshal(ContentHeader(body_size=0, properties=properties), 1)
    assert wire.content_header(frame).properties.headers == {"v": value}


def test_pamqp_itself_is_left_alone() -> None:
    # Decoding and encoding through wire above changed nothing for other pamqp users.
    frame = header_frame(CONTENT_TYPE, shortstr(b"\xff"))
    wire.content_header(frame)
    wire.CopyProperties(headers={"v": 0.1}).marshal()
    with pytest.raises((UnicodeDecodeError, pamqp.exceptions.UnmarshalingException)):
        pamqp.frame.unmarshal(frame)
    assert encode.encode_table_value(0.1) == b"f" + struct.pack(">f", 0.1)  # pamqp's 32-bit float, as ever
    assert "amqptasks" not in decode.short_str.__module__ and "amqptasks" not in encode.table_integer.__module__


def test_headers_that_cannot_be_encoded_become_text_and_are_named() -> None:
    headers = {"fine": 1, "raw": b"\x00\x01", "nested": {"ok": [1, "a"]}, "obj": object, "big": 2**70}
    kept = wire.encodable_headers(headers)
    assert kept["fine"] == 1 and kept["nested"] == {"ok": [1, "a"]} and kept["raw"] == b"\x00\x01"
    assert kept["obj"] == repr(object) and kept["big"] == repr(2**70)
    assert kept[wire.H_REWRITTEN] == "obj, big"
    wire.CopyProperties(headers=kept).marshal()  # the whole copy now encodes


def test_text_makes_any_property_value_a_shortstr() -> None:
    assert wire.text(None) is None and wire.text("x") == "x"
    assert wire.text(b"\xff") == "\ufffd" and wire.text(12) == "12"


def test_long_replaced_text_still_fits_a_shortstr() -> None:
    shown = wire.text(b"\xff" * 100)  # 100 replacement characters would be 300 bytes
    assert shown is not None and len(shown.encode()) <= 255
    encode.short_string(shown)
    long_key = "k" * 300
    kept = wire.encodable_headers({long_key: 1})
    (key,) = kept
    assert len(key.encode()) <= 255
    wire.CopyProperties(headers=kept).marshal()
