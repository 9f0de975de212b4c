"""pamqp made safe: frames a client may legally (or carelessly) send decode, and copies re-encode."""

from __future__ import annotations

import datetime
import struct
from decimal import Decimal

import pytest
from pamqp import decode, encode

from amqptasks.aio import wire


@pytest.fixture(autouse=True)
def installed() -> None:
    wire.install()



def _shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def test_a_shortstr_that_is_not_utf8_decodes_to_bytes() -> None:
    assert decode.METHODS["shortstr"](_shortstr(b"\xff\xfe")) == (3, b"\xff\xfe")
    assert decode.METHODS["shortstr"](_shortstr("caf\u00e9".encode())) == (6, "caf\u00e9")


def test_a_timestamp_out_of_range_decodes_to_none() -> None:
    assert decode.METHODS["timestamp"](struct.pack(">Q", 2**63)) == (8, None)
    consumed, when = decode.METHODS["timestamp"](struct.pack(">Q", 1_700_000_000))
    assert (consumed, when) == (8, datetime.datetime.fromtimestamp(1_700_000_000, tz=datetime.timezone.utc))


def test_negative_decimals_survive_a_round_trip() -> None:
    encoded = encode.encode_table_value(Decimal("-5.05"))
    assert decode.embedded_value(encoded) == (len(encoded), Decimal("-5.05"))


@pytest.mark.parametrize("value", [-1, -128, -129, 127, 128, -(2**40)])
def test_every_integer_header_encodes_and_decodes(value: int) -> None:
    encoded = encode.encode_table_value(value)
    assert decode.embedded_value(encoded) == (len(encoded), value)


def test_a_table_key_that_is_not_utf8_decodes_with_replacement() -> None:
    key = b"k\xff"
    body = bytes([len(key)]) + key + b"S" + struct.pack(">I", 1) + b"v"
    table = struct.pack(">I", len(body)) + body
    assert decode.METHODS["table"](table) == (len(table), {"k\ufffd": "v"})


def test_headers_pamqp_cannot_encode_become_text_and_are_named() -> None:
    headers = {"fine": 1, "raw": b"\x00\x01", "nested": {"ok": [1, "a"]}, "obj": object}
    kept = wire.encodable_headers(headers)
    assert kept["fine"] == 1 and kept["nested"] == {"ok": [1, "a"]}
    assert kept["raw"] == repr(b"\x00\x01") and kept["obj"] == repr(object)
    assert kept[wire.H_REWRITTEN] == "raw, obj"
    encode.field_table(kept)  # the whole copy now encodes


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
    encode.field_table(kept)


def test_floats_are_written_as_doubles_so_copies_keep_their_value() -> None:
    encoded = encode.encode_table_value({"ratio": 0.1, "list": [2.5]})
    assert decode.field_table(encoded[1:])[1] == {"ratio": 0.1, "list": [2.5]}
    assert encode.encode_table_value(0.1) == b"d" + struct.pack(">d", 0.1)
