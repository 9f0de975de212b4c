"""The worker's acks (amqptasks.worker.acks) on a real broker: a finished delivery is acked at the
end of the loop turn it finished in, even while an earlier delivery still runs (its prefetch slot
is what lets the broker send the next message)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage

from amqptasks import fastpaths
from amqptasks.aio.connection import aconnect
from amqptasks.settings import Settings
from amqptasks.worker.acks import AckSender
from amqptasks.worker.handling import RECOVERABLE, tag_of
from tests.integration.test_tap import publish, queue_depth

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def connection(broker_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    # The deliveries are taken off the tap in both variants: on, whatever the run's setting.
    monkeypatch.setenv(fastpaths.ENV, "1")
    connection = await aconnect(Settings(broker_url=broker_url), f"test {request.node.nodeid}")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.mark.parametrize("direct", [True, False], ids=["written-by-the-tap", "through-aiormq"])
async def test_deliveries_finished_above_a_running_one_are_acked_in_the_same_turn(
    connection: Any, broker_url: str, unique: str, cleanup: Any, direct: bool
) -> None:
    queue = cleanup.queue(f"{unique}.q")
    channel = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
    await channel.queue_declare(queue, durable=True)  # 4.3 refuses transient non-exclusive queues
    await asyncio.to_thread(publish, broker_url, queue, [str(n).encode() for n in range(8)])
    taken: list[DeliveredMessage] = []
    arrived = asyncio.Event()

    def take(message: DeliveredMessage) -> None:
        taken.append(message)
        arrived.set()

    connection.tap.take(channel, "t", take)
    await channel.basic_qos(prefetch_count=8)
    await channel.basic_consume(queue, take, consumer_tag="t")
    async with asyncio.timeout(10):
        while len(taken) < 8:
            arrived.clear()
            await arrived.wait()
    acks = AckSender(channel, RECOVERABLE, write=connection.tap.write if direct else None)
    for delivery in taken[1:4]:  # finished; the first one and the last four "still run"
        acks.ack(tag_of(delivery))
    for _ in range(5):  # a few loop turns: the acks are written (or queued for aiormq's writer)
        await asyncio.sleep(0)
    await channel.basic_qos(prefetch_count=8)  # a round trip behind the acks on this channel
    await connection.close()  # what is still unacked returns to the queue
    assert await asyncio.to_thread(queue_depth, broker_url, queue) == 5  # only those still running
