"""The worker's socket under aiormq (amqptasks.aio.tap) on a real broker: deliveries taken off the
socket, everything else left to aiormq, writes in order, the connection kept alive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiormq.connection
import pika
import pytest
from aiormq.abc import ChannelFrame, DeliveredMessage

from amqptasks import fastpaths
from amqptasks.aio.connection import aconnect
from amqptasks.aio.tap import DeliveryTap
from amqptasks.core.frames import encode_ack
from amqptasks.settings import Settings

pytestmark = pytest.mark.timeout(60)


class Consuming:
    """A tapped connection consuming one queue; what the tap hands over is collected."""

    def __init__(self, connection: Any, channel: Any, tap: DeliveryTap) -> None:
        self.connection = connection
        self.channel = channel
        self.tap = tap
        self.taken: list[DeliveredMessage] = []
        self.arrived = asyncio.Event()

    def take(self, message: DeliveredMessage) -> None:
        self.taken.append(message)
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.taken) < count:
                self.arrived.clear()
                await self.arrived.wait()


def yield_between_taking_and_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutant of aiormq's writer that the tap's direct writes must survive: its frame generator
    awaits once between taking a frame off the write queue and handing it to the writer."""

    async def anext_(self: Any) -> Any:
        if self.close_event.is_set():
            raise StopAsyncIteration
        frame = await self.queue.get()
        self.queue.task_done()
        await asyncio.sleep(0)  # the mutation: the queue is empty, the frame not yet written
        return frame

    monkeypatch.setattr(aiormq.connection.FrameGenerator, "__anext__", anext_)


@pytest.fixture(params=["as-released", "writer-yields"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """aiormq's writer as released, and the mutant (``yield_between_taking_and_writing``)."""
    if request.param == "writer-yields":
        yield_between_taking_and_writing(monkeypatch)
    return str(request.param)


@pytest.fixture
async def consuming(
    broker_url: str, unique: str, cleanup: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Consuming]:
    monkeypatch.setenv(fastpaths.ENV, "1")  # these tests are about the tap: on whatever the run's setting
    settings = Settings(broker_url=broker_url, heartbeat=1)
    connection = await aconnect(settings, f"test {request.node.nodeid}")
    try:
        channel = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
        await channel.queue_declare(cleanup.queue(f"{unique}.q"), durable=True)  # 4.3 refuses transient non-exclusive queues
        assert connection.tap is not None
        yield Consuming(connection, channel, connection.tap)
    finally:
        await connection.close()


def publish(broker_url: str, queue: str, bodies: list[bytes], **properties: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(**properties))
    finally:
        connection.close()


def queue_depth(broker_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


async def test_deliveries_are_handed_over_whole_and_acks_written_directly(
    consuming: Consuming, broker_url: str, unique: str
) -> None:
    queue = f"{unique}.q"
    large = bytes(range(256)) * 1200  # 300 KB: more than one frame (frame_max is 128 KiB)
    bodies = [b'{"n": 1}', b"", large]
    await asyncio.to_thread(publish, broker_url, queue, bodies, correlation_id="c-1", headers={"h": [1, "x"]})
    consuming.tap.take(consuming.channel, "tapped", consuming.take)
    await consuming.channel.basic_consume(queue, lambda _m: pytest.fail("aiormq got a tapped delivery"), consumer_tag="tapped")
    await consuming.wait_for(3)
    assert [m.body for m in consuming.taken] == bodies
    assert [m.delivery.delivery_tag for m in consuming.taken] == [1, 2, 3]
    assert all(m.channel is consuming.channel for m in consuming.taken)
    assert all(m.header.properties.correlation_id == "c-1" for m in consuming.taken)
    assert consuming.taken[0].header.properties.headers == {"h": [1, "x"]}
    assert consuming.tap.deliveries == 3
    assert consuming.tap.write(encode_ack(consuming.channel.number, 3, multiple=True))
    # A round trip behind the ack: a close right after it can reach the broker's channel first
    # (seen once under load), and the unacked messages would be requeued.
    await consuming.channel.basic_qos(prefetch_count=5)
    await consuming.connection.close()  # unacked messages would return to the queue now
    assert await asyncio.to_thread(queue_depth, broker_url, queue) == 0


async def test_a_consumer_not_taken_is_served_by_aiormq(consuming: Consuming, broker_url: str, unique: str) -> None:
    queue = f"{unique}.q"
    via_aiormq: list[bytes] = []
    got = asyncio.Event()

    async def on_message(message: DeliveredMessage) -> None:
        via_aiormq.append(message.body)
        got.set()

    consuming.tap.take(consuming.channel, "some-other-tag", consuming.take)
    await consuming.channel.basic_consume(queue, on_message, no_ack=True)
    await asyncio.to_thread(publish, broker_url, queue, [b"plain"])
    async with asyncio.timeout(10):
        await got.wait()
    assert via_aiormq == [b"plain"] and consuming.taken == [] and consuming.tap.deliveries == 0


async def test_a_direct_write_goes_after_what_aiormq_has_queued(
    writer: str, consuming: Consuming, broker_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"{unique}.q"
    # Checked at connect: with the mutant the tap must not write directly (and says so).
    assert consuming.tap.direct_writes is (writer == "as-released")
    warned = any("does not write a frame in the step" in r.getMessage() for r in caplog.get_records("setup"))
    assert warned is (writer == "writer-yields")
    await asyncio.to_thread(publish, broker_url, queue, [b"1", b"2", b"3", b"4"])
    consuming.tap.take(consuming.channel, "tapped", consuming.take)
    await consuming.channel.basic_consume(queue, consuming.take, consumer_tag="tapped")
    await consuming.wait_for(4)
    number = consuming.channel.number
    # Queued for aiormq's writer first, then written "directly" in the same loop turn. Overtaking
    # would send the multiple ack of 2 before the ack of 1: tag 1 unknown, the channel closed.
    consuming.channel.write_queue.put_nowait(ChannelFrame(payload=encode_ack(number, 1), should_close=False))
    assert consuming.tap.write(encode_ack(number, 2, multiple=True))
    await consuming.channel.basic_qos(prefetch_count=5)  # a round trip: aiormq's writer is idle again
    assert not consuming.channel.is_closed
    # Again, once aiormq's writer has taken the ack of 3 off its queue (one loop turn): the
    # mutant has not written it yet, and a direct write of the multiple ack of 4 would overtake it.
    consuming.channel.write_queue.put_nowait(ChannelFrame(payload=encode_ack(number, 3), should_close=False))
    await asyncio.sleep(0)
    assert consuming.tap.write(encode_ack(number, 4, multiple=True))
    await consuming.channel.basic_qos(prefetch_count=5)  # a round trip behind the acks
    assert not consuming.channel.is_closed
    await consuming.connection.close()
    assert await asyncio.to_thread(queue_depth, broker_url, queue) == 0


async def test_a_busy_tapped_connection_stays_alive_past_aiormqs_heartbeat_grace(
    consuming: Consuming, broker_url: str, unique: str
) -> None:
    # heartbeat=1: aiormq drops a connection that shows it no frame for (1 + 1) x 3 s. A broker sends
    # heartbeats only when it has sent nothing else, and every delivery here is the tap's.
    queue = f"{unique}.q"
    consuming.tap.take(consuming.channel, "tapped", consuming.take)
    await consuming.channel.basic_consume(queue, consuming.take, consumer_tag="tapped", no_ack=True)

    def keep_sending(seconds: float) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        sent = 0
        try:
            channel = connection.channel()
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                channel.basic_publish("", queue, b"tick")
                sent += 1
                connection.sleep(0.01)
        finally:
            connection.close()
        return sent

    sent = await asyncio.to_thread(keep_sending, 9.0)
    await consuming.wait_for(sent)
    assert not consuming.connection.is_closed
    assert consuming.tap.deliveries == sent


async def test_a_writer_aiormq_no_longer_lets_us_check_leaves_direct_writes_off(
    consuming: Consuming, caplog: pytest.LogCaptureFixture
) -> None:
    """An aiormq whose connection has no write queue any more (a release renamed it): the check
    falls back to aiormq's own writer and says so, instead of failing the connect."""
    assert consuming.tap.direct_writes  # as released: checked and on

    class Renamed:  # an aiormq connection without the attributes the tap reads
        pass

    assert await consuming.tap.check_writer_order(Renamed()) is False
    assert consuming.tap.direct_writes is False
    assert any("cannot check aiormq's writer" in r.getMessage() for r in caplog.records)
