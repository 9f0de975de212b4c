"""Async sends (aio-pika underneath) against the real broker: routing, properties, failures, reconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from amqptasks import (
    App,
    BrokerUnavailable,
    PublishError,
    PublishTimeout,
    ResultUnavailable,
    UnroutableError,
)
from tests.conftest import Broker
from tests.integration.test_send_sync import (
    ALL_HEADER_TYPES,
    aget_headers,
    close_connections,
    closed_port_url,
    get_one,
    routing_app,
    wait_count,
)


@pytest.fixture
async def app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> AsyncIterator[App]:
    the_app = routing_app(tmp_path, unique, cleanup, broker_url)
    yield the_app
    await the_app.aclose()


async def test_direct_topic_and_fanout_routes(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.direct.add")
    def direct_add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"{unique}.orders.create")
    def create_order(order_id: int) -> None: ...

    @app.task(name=f"{unique}.audit.record", ignore_result=True)
    def record(event: str) -> None: ...

    await direct_add.adelay(3, 4)
    await create_order.aapply_async((17,))
    await record.asend(("login",))

    props, body = get_one(channel, f"{unique}.q1")
    assert body == b'{"args":[3,4],"kwargs":{}}'
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.headers["task"] == f"{unique}.direct.add" and props.headers["amqptasks"] == 1
    assert props.headers["id"] == props.message_id == props.correlation_id
    assert props.reply_to and props.reply_to.startswith("amq.rabbitmq.reply-to")
    assert isinstance(props.timestamp, int) and abs(props.timestamp - time.time()) < 60

    assert get_one(channel, f"{unique}.orders")[0].headers["task"] == f"{unique}.orders.create"
    for queue in ("audit1", "audit2"):
        props, _ = get_one(channel, f"{unique}.{queue}")
        assert props.headers["task"] == f"{unique}.audit.record" and props.reply_to is None


async def test_send_options_win(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.orders.ship", queue=f"{unique}.plain")
    def ship(order_id: int) -> None: ...

    await ship.adelay(1)
    await ship.asend((2,), routing_key="orders.shipped", exchange=f"{unique}.topic")
    await ship.aapply_async((3,), queue=f"{unique}.q1", priority=4, headers={"tenant": "acme"})
    assert get_one(channel, f"{unique}.plain")[1] == b'{"args":[1],"kwargs":{}}'
    assert get_one(channel, f"{unique}.orders")[1] == b'{"args":[2],"kwargs":{}}'
    props, _ = get_one(channel, f"{unique}.q1")
    assert props.priority == 4 and props.headers["tenant"] == "acme"


async def test_header_values_of_every_supported_type_arrive_as_sent(app: App, unique: str, broker_url: str) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    await t.aapply_async(headers=ALL_HEADER_TYPES)
    headers = await aget_headers(broker_url, f"{unique}.plain")
    assert {name: headers[name] for name in ALL_HEADER_TYPES} == ALL_HEADER_TYPES


async def test_unroutable_raises_within_a_second(app: App, unique: str) -> None:
    @app.task(name=f"{unique}.lost", exchange=f"{unique}.direct", routing_key="nobody")
    def lost() -> None: ...

    with pytest.raises(UnroutableError):
        await lost.adelay()  # connect and provision outside the timing
    start = time.monotonic()
    with pytest.raises(UnroutableError) as caught:
        await lost.adelay()
    assert time.monotonic() - start < 1.0
    assert caught.value.exchange == f"{unique}.direct" and caught.value.routing_key == "nobody"


async def test_a_missing_exchange_is_a_clear_error_and_the_producer_survives(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    await t.adelay()
    with pytest.raises(PublishError, match=f"exchange '{unique}.nope' does not exist"):
        await t.asend(exchange=f"{unique}.nope", routing_key="x")
    await t.adelay()
    assert wait_count(channel, f"{unique}.plain", 2) == 2


async def test_unreachable_broker_raises_broker_unavailable() -> None:
    url, port = closed_port_url()
    app = App("unreachable", broker=url)

    @app.task
    def t() -> None: ...

    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        await t.adelay()
    assert time.monotonic() - start < app.settings.connect_timeout + 1
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)


async def test_asend_many_sends_all_and_reports_the_unroutable_one(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    results = await app.asend_many([add.s(i, i) for i in range(1000)])
    assert len({r.id for r in results}) == 1000
    with pytest.raises(UnroutableError, match=f"{unique}.missing"):
        await app.asend_many([add.s(1, 1), add.signature((2, 2), queue=f"{unique}.missing"), add.s(3, 3)])
    assert wait_count(channel, f"{unique}.plain", 1002) == 1002


async def test_concurrent_sends_share_one_connection(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    await asyncio.gather(*(add.adelay(i, i) for i in range(500)))
    assert app._async is not None and len(app._async._producers) == 1 and app._async._opened == 1
    assert wait_count(channel, f"{unique}.plain", 500) == 500


async def test_sends_written_together_each_get_their_own_outcome(app: App, unique: str, channel: Any) -> None:
    """Sends of one loop turn leave in one write (aio/outbox.py); each still gets its own confirm or error."""

    @app.task(name=f"{unique}.echo", queue=f"{unique}.plain")
    def echo(text: str) -> str:
        return text

    await echo.adelay("open")
    big = "x" * 1_000_000  # several body frames (frame_max is 128 KiB)
    sends = [echo.adelay(f"{i}") for i in range(20)]
    sends.insert(7, echo.aapply_async(args=("lost",), queue=f"{unique}.missing"))
    sends.insert(12, echo.adelay(big))
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    errors = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert errors == [7] and isinstance(outcomes[7], UnroutableError) and f"{unique}.missing" in str(outcomes[7])
    assert wait_count(channel, f"{unique}.plain", 22) == 22
    texts = [orjson.loads(get_one(channel, f"{unique}.plain")[1])["args"][0] for _ in range(22)]
    assert texts == ["open", *[f"{i}" for i in range(11)], big, *[f"{i}" for i in range(11, 20)]]


async def test_the_next_send_after_the_connection_was_closed_succeeds(broker: Broker, app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    first = await add.adelay(1, 1)
    assert await asyncio.to_thread(close_connections, broker, f"amqptasks async producer {unique} ") == 1
    await asyncio.sleep(0.2)
    await add.adelay(2, 2)
    assert wait_count(channel, f"{unique}.plain", 2) == 2
    with pytest.raises(ResultUnavailable, match="is gone"):
        await first.aget(timeout=5)


async def test_a_nack_raises_publish_error(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> None:
    cleanup.queue(unique)
    path = tmp_path / "full.yaml"
    path.write_text(f"queues:\n  {unique}: {{max_length: 1, overflow: reject-publish}}\n")
    app = App(unique, broker=broker_url, topology=str(path))

    @app.task(name=f"{unique}.t", queue=unique, ignore_result=True)
    def t() -> None: ...

    try:
        await t.adelay()
        with pytest.raises(PublishError, match="nacked"):
            await t.adelay()
    finally:
        await app.aclose()


async def test_a_confirm_that_does_not_come_raises_publish_timeout(app: App, unique: str, monkeypatch: Any) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    await t.adelay()
    assert app._async is not None
    producer = next(iter(app._async._producers.values()))
    producer.settings = replace(producer.settings, confirm_timeout=0.4)

    def never_confirmed(*_args: Any, **_kwargs: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    monkeypatch.setattr(producer._outbox, "publish", never_confirmed)
    start = time.monotonic()
    with pytest.raises(PublishTimeout, match=r"not confirmed within 0\.4 s"):
        await t.adelay()
    assert 0.4 <= time.monotonic() - start < 1.5
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the watchdog's cancel was absorbed
    monkeypatch.undo()
    producer.settings = app.settings
    await t.adelay()


async def test_a_broker_that_stays_away_fails_the_send_after_bounded_retries(broker: Broker, app: App, unique: str) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    await t.adelay()
    assert app._async is not None
    app._async.settings = replace(app.settings, reconnect_delay=0.05).with_broker(closed_port_url()[0])
    assert await asyncio.to_thread(close_connections, broker, f"amqptasks async producer {unique} ") == 1
    await asyncio.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"lost the connection .* after 4 attempt"):
        await t.adelay()
    assert time.monotonic() - start < 2.0


async def test_a_send_racing_the_close_of_its_connection_still_lands(broker: Broker, app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    await add.adelay(1, 1)
    closing = asyncio.create_task(asyncio.to_thread(close_connections, broker, f"amqptasks async producer {unique} "))
    for i in range(200):  # some of these go out while the broker closes the connection
        await add.adelay(i, i)
    assert await closing == 1
    await add.adelay(0, 0)
    assert wait_count(channel, f"{unique}.plain", 202) >= 202  # at-least-once: a resend may duplicate
