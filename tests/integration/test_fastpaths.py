"""AMQPTASKS_FAST_PATHS=0 leaves only the libraries' public API in use, and our lenient decoding
and faithful encoding never reach a plain aio-pika connection of the same process (aio/wire.py)."""

from __future__ import annotations

import asyncio
import struct
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

import aio_pika
import pika
import pytest

from amqptasks import fastpaths
from amqptasks.aio import outbox, tap
from amqptasks.aio.connection import PlainConnection, TappedConnection, aconnect
from amqptasks.core.envelope import Properties
from amqptasks.settings import Settings
from amqptasks.sync import direct, producer
from amqptasks.worker import acks, replies
from tests.integration.test_send_sync import queue_app

pytestmark = pytest.mark.timeout(60)


def _fast_path_taken(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError("a fast path was used with AMQPTASKS_FAST_PATHS=0")


@pytest.fixture
def fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch off, and every fast path made to fail the test if it is used anyway."""
    monkeypatch.setenv(fastpaths.ENV, "0")
    for module, name in [
        (outbox, "encode_publish"), (producer, "encode_publish"), (replies, "encode_publish"), (acks, "encode_ack"),
    ]:
        monkeypatch.setattr(module, name, _fast_path_taken)
    monkeypatch.setattr(tap.TapFactory, "create", _fast_path_taken)
    monkeypatch.setattr(tap.DeliveryTap, "write", _fast_path_taken)
    monkeypatch.setattr(direct.DirectSocket, "send", _fast_path_taken)
    monkeypatch.setattr(direct.DirectSocket, "_read_direct", _fast_path_taken)


def test_the_switch_reads_its_values_and_names_a_bad_one() -> None:
    assert fastpaths.enabled({}) and fastpaths.enabled({fastpaths.ENV: "1"})
    assert not fastpaths.enabled({fastpaths.ENV: "0"}) and not fastpaths.enabled({fastpaths.ENV: "off"})
    with pytest.raises(fastpaths.ConfigurationError, match=r"AMQPTASKS_FAST_PATHS='maybe'.*set it to 1"):
        fastpaths.enabled({fastpaths.ENV: "maybe"})


async def test_switched_off_an_aio_connection_has_no_tap(fast_paths_off: None, broker_url: str) -> None:
    connection = await aconnect(Settings(broker_url=broker_url), "test fast paths off")
    try:
        assert type(connection) is PlainConnection and connection.tap is None
    finally:
        await connection.close()


async def test_switched_on_an_aio_connection_has_its_tap_writing_directly(
    monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    monkeypatch.setenv(fastpaths.ENV, "1")
    connection = await aconnect(Settings(broker_url=broker_url), "test fast paths on")
    try:
        assert type(connection) is TappedConnection and connection.tap is not None and connection.tap.direct_writes
    finally:
        await connection.close()


def test_switched_off_pika_writes_and_reads_everything(fast_paths_off: None, broker_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        socket = direct.DirectSocket(connection)
        assert not socket.active and socket.frame_max is None
        assert "_output_marshaled_frames" not in vars(connection._impl)  # pika's own writer, unpatched
    finally:
        connection.close()


def test_sync_sends_and_results_work_switched_off(
    fast_paths_off: None, tmp_path: Path, unique: str, cleanup: Any, broker_url: str
) -> None:
    app = queue_app(tmp_path, unique, cleanup, broker_url)
    try:
        @app.task(name=f"{unique}.t", queue=unique)
        def t() -> None: ...

        t.apply_async(headers={"n": -1})  # pika cannot encode a float header at all: ints only
        channel = pika.BlockingConnection(pika.URLParameters(broker_url)).channel()
        method, _props, body = channel.basic_get(unique, auto_ack=True)
        assert method is not None and body
        channel.connection.close()
    finally:
        app.close()


async def test_async_sends_and_replies_work_switched_off(
    fast_paths_off: None, tmp_path: Path, unique: str, cleanup: Any, broker_url: str
) -> None:
    app = queue_app(tmp_path, unique, cleanup, broker_url)
    try:
        @app.task(name=f"{unique}.t", queue=unique)
        def t() -> None: ...

        await asyncio.gather(*(t.aapply_async(headers={"n": 200}) for _ in range(20)))
        publisher = replies.ReplyPublisher(Settings(broker_url=broker_url), "test replies")
        await publisher.publish(unique, b"reply", Properties(message_id="r-1", headers={"v": 1}), "task-1")
        await publisher.close()
        channel = pika.BlockingConnection(pika.URLParameters(broker_url)).channel()
        bodies = []
        while (got := channel.basic_get(unique, auto_ack=True))[0] is not None:
            bodies.append(got[2])
        channel.connection.close()
        assert len(bodies) == 21 and bodies[-1] == b"reply"
    finally:
        await app.aclose()


async def test_a_plain_aio_pika_connection_beside_ours_encodes_and_decodes_as_stock_pamqp(
    monkeypatch: pytest.MonkeyPatch, broker_url: str, unique: str, cleanup: Any
) -> None:
    monkeypatch.setenv(fastpaths.ENV, "1")
    queue = cleanup.queue(f"{unique}.q")
    ours = await aconnect(Settings(broker_url=broker_url), "test ours")  # with its tap and wire decoding
    plain = await aio_pika.connect(broker_url)
    try:
        channel = await plain.channel()
        await channel.declare_queue(queue, durable=True)  # 4.3 refuses transient non-exclusive queues
        # Encoding: stock pamqp writes a float header as 32 bits (ours writes doubles).
        await channel.default_exchange.publish(aio_pika.Message(b"x", headers={"f": 0.1}), routing_key=queue)
        message = await (await channel.get_queue(queue, ensure=False)).get(no_ack=True, timeout=5)
        assert message is not None
        assert message.headers["f"] == struct.unpack(">f", struct.pack(">f", 0.1))[0] != 0.1
        # Decoding: a negative decimal, sent by pika, read by the plain connection as stock pamqp reads it.
        sender = pika.BlockingConnection(pika.URLParameters(broker_url))
        sender.channel().basic_publish("", queue, b"y", pika.BasicProperties(headers={"d": Decimal("-5.05")}))
        sender.close()
        message = await (await channel.get_queue(queue, ensure=False)).get(no_ack=True, timeout=5)
        assert message is not None
        pamqp_3 = int(version("pamqp").split(".")[0]) < 4
        stock = Decimal(2**32 - 505) * Decimal(10) ** -2 if pamqp_3 else Decimal("-5.05")  # pamqp 3: unsigned
        assert message.headers["d"] == stock
    finally:
        await plain.close()
        await ours.close()
