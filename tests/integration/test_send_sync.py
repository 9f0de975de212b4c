"""Sync sends against the real broker: routing, message properties, failures, batches, reconnects.

The helpers at the top are shared by the other producer test modules.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import orjson
import pika
import pytest

from amqptasks import (
    App,
    BrokerUnavailable,
    ConfigurationError,
    PublishError,
    PublishTimeout,
    ResultUnavailable,
    Settings,
    UnroutableError,
)
from amqptasks.sync import direct as direct_module
from tests.conftest import Broker

ROUTING_TOPOLOGY = """\
exchanges:
  {u}.direct: {{type: direct}}
  {u}.topic: {{type: topic}}
  {u}.fanout: {{type: fanout}}
queues:
  {u}.q1:
    bindings: [{{exchange: {u}.direct, routing_key: k1}}]
  {u}.orders:
    bindings: [{{exchange: {u}.topic, routing_key: "orders.*"}}]
  {u}.audit1:
    bindings: [{{exchange: {u}.fanout}}]
  {u}.audit2:
    bindings: [{{exchange: {u}.fanout}}]
  {u}.plain: {{}}
routes:
  "{u}.orders.*": {{exchange: {u}.topic, routing_key: orders.created}}
  "{u}.audit.*": {{exchange: {u}.fanout}}
  "{u}.direct.*": {{exchange: {u}.direct, routing_key: k1}}
"""
ROUTING_QUEUES = ("q1", "orders", "audit1", "audit2", "plain")
ROUTING_EXCHANGES = ("direct", "topic", "fanout")


def routing_app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> App:
    """An App on a private topology: a direct, a topic and a fanout exchange, their queues, routes."""
    for name in ROUTING_QUEUES:
        cleanup.queue(f"{unique}.{name}")
    for name in ROUTING_EXCHANGES:
        cleanup.exchange(f"{unique}.{name}")
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTING_TOPOLOGY.format(u=unique))
    return App(unique, broker=broker_url, topology=str(path))


def queue_app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, queue: str | None = None) -> App:
    """An App whose topology is one private queue (``unique`` by default)."""
    queue = queue or unique
    cleanup.queue(queue)
    path = tmp_path / "queue.yaml"
    path.write_text(f"queues:\n  {queue}: {{}}\n")
    return App(unique, broker=broker_url, topology=str(path))


def get_one(channel: Any, queue: str) -> tuple[pika.BasicProperties, bytes]:
    """The next message of ``queue`` (acked), failing the test if there is none."""
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, f"no message in {queue}"
    return props, body


def count(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_count(channel: Any, queue: str, expected: int, timeout: float = 5.0) -> int:
    """Queue counts lag a publish confirm by a moment; poll until ``expected`` or the timeout."""
    deadline = time.monotonic() + timeout
    while (found := count(channel, queue)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def closed_port_url() -> tuple[str, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"amqp://guest:s3cret@127.0.0.1:{port}/%2F", port


def close_connections(broker: Broker, label: str, timeout: float = 10.0) -> int:
    """Close (broker-side) only the connections whose name contains ``label``; how many were closed.

    Never ``close_all_connections``: other people's tests share this broker.
    """
    deadline = time.monotonic() + timeout
    while True:
        listing = broker.ctl("-q", "list_connections", "pid", "client_properties", timeout=30)
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if label in line]
        if pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in pids:
        broker.ctl("-q", "close_connection", pid, "amqptasks test", timeout=30, check=False)
    return len(pids)


@pytest.fixture
def app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> Iterator[App]:
    the_app = routing_app(tmp_path, unique, cleanup, broker_url)
    yield the_app
    the_app.close()


# --- routing and message properties ---------------------------------------------------------------


def test_direct_topic_and_fanout_routes(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.direct.add")
    def direct_add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"{unique}.orders.create")
    def create_order(order_id: int) -> None: ...

    @app.task(name=f"{unique}.audit.record", ignore_result=True)
    def record(event: str) -> None: ...

    direct_add.delay(3, 4)
    create_order.delay(17)
    record.delay("login")

    props, body = get_one(channel, f"{unique}.q1")
    assert body == b'{"args":[3,4],"kwargs":{}}'
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.headers["task"] == f"{unique}.direct.add" and props.headers["amqptasks"] == 1
    assert props.headers["id"] == props.message_id == props.correlation_id and "retries" not in props.headers  # 0 is the default, omitted
    assert props.reply_to and props.reply_to.startswith("amq.rabbitmq.reply-to")
    assert isinstance(props.timestamp, int)

    props, body = get_one(channel, f"{unique}.orders")
    assert props.headers["task"] == f"{unique}.orders.create" and body == b'{"args":[17],"kwargs":{}}'

    for queue in ("audit1", "audit2"):  # a fanout copies to every bound queue
        props, _ = get_one(channel, f"{unique}.{queue}")
        assert props.headers["task"] == f"{unique}.audit.record"
        assert props.reply_to is None and props.correlation_id is None  # ignore_result: no reply wanted


def test_send_and_task_options_win_over_routes(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.orders.ship", queue=f"{unique}.plain")
    def ship(order_id: int) -> None: ...

    ship.delay(1)  # the task's queue beats the topology route
    ship.send((2,), routing_key="orders.shipped", exchange=f"{unique}.topic")  # the send beats the task
    ship.apply_async(args=(3,), queue=f"{unique}.q1", priority=7, headers={"tenant": "acme"}, expires=60)
    assert get_one(channel, f"{unique}.plain")[1] == b'{"args":[1],"kwargs":{}}'
    assert get_one(channel, f"{unique}.orders")[1] == b'{"args":[2],"kwargs":{}}'
    props, _ = get_one(channel, f"{unique}.q1")
    assert props.priority == 7 and props.headers["tenant"] == "acme"
    assert props.headers["expires"] > time.time() * 1000


ALL_HEADER_TYPES = {"ratio": 0.5, "tags": ["a", 1, None], "meta": {"n": {"deep": True}}, "raw": b"\x00\xff", "big": 2**40}


async def aget_headers(broker_url: str, queue: str) -> dict[str, Any]:
    """Headers of the next message in ``queue``, decoded by pamqp as the worker decodes them
    (pika's decoder truncates floats to integers)."""
    connection = await aio_pika.connect(broker_url)
    try:
        channel = await connection.channel()
        message = await (await channel.get_queue(queue, ensure=False)).get(no_ack=True, timeout=5)
        assert message is not None, f"no message in {queue}"
        return dict(message.headers)
    finally:
        await connection.close()


def test_header_values_of_every_supported_type_arrive_as_sent(app: App, unique: str, broker_url: str) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    t.apply_async(headers=ALL_HEADER_TYPES)
    headers = asyncio.run(aget_headers(broker_url, f"{unique}.plain"))
    assert {name: headers[name] for name in ALL_HEADER_TYPES} == ALL_HEADER_TYPES
    with pytest.raises(ConfigurationError, match="header 'ids' cannot be sent"):
        t.apply_async(headers={"ids": {1, 2}})


@pytest.fixture
def own_vhost(broker: Broker, unique: str) -> Iterator[str]:
    """A vhost of this test's own (guest may use it), deleted afterwards: the built-in topology's
    names (celery, tasks) are nobody's to declare on a shared vhost."""
    vhost = unique
    broker.ctl("add_vhost", vhost)
    try:
        broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        broker.ctl("delete_vhost", vhost)


def test_default_queue_and_the_default_topology(
    broker_url: str, own_vhost: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delay cascade is not under test here: classic, so that a new vhost does not cost the
    # shared broker 135 quorum queues made and deleted.
    monkeypatch.setenv("AMQPTASKS_DELAY_QUEUE_TYPE", "classic")
    url = broker_url.rsplit("/", 1)[0] + "/" + quote(own_vhost, safe="")
    app = App(unique, broker=url)  # no topology: the built-in default is provisioned

    @app.task(queue=f"{unique}.never")
    def probe() -> None: ...

    try:
        with pytest.raises(UnroutableError):  # any send provisions first; this one has no queue
            probe.delay()
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            assert channel.exchange_declare("tasks", passive=True)
            # Replicated by default: quorum, with the delivery limit and dead-letter target it says.
            for queue, expected in (("celery", {"x-queue-type": "quorum", "x-delivery-limit": 20,
                                                 "x-dead-letter-exchange": "tasks.dead",
                                                 "x-dead-letter-routing-key": "celery.dead"}),
                                    ("celery.dead", {"x-queue-type": "quorum", "x-delivery-limit": 1_000_000})):
                assert channel.queue_declare(queue, durable=True, arguments=expected, passive=False)  # equivalent: no 406
        finally:
            connection.close()
    finally:
        app.close()


# --- failures -------------------------------------------------------------------------------------


def test_unroutable_raises_within_a_second(app: App, unique: str) -> None:
    @app.task(name=f"{unique}.lost", exchange=f"{unique}.direct", routing_key="nobody")
    def lost() -> None: ...

    with pytest.raises(UnroutableError):  # connect and provision outside the timing
        lost.delay()
    start = time.monotonic()
    with pytest.raises(UnroutableError) as caught:
        lost.delay()
    assert time.monotonic() - start < 1.0
    assert caught.value.exchange == f"{unique}.direct" and caught.value.routing_key == "nobody"
    assert f"{unique}.direct" in str(caught.value) and "'nobody'" in str(caught.value)


def test_a_missing_queue_is_unroutable_too(app: App, unique: str) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.does-not-exist")
    def t() -> None: ...

    with pytest.raises(UnroutableError, match="default exchange"):
        t.delay()


def test_a_missing_exchange_is_a_clear_error_and_the_producer_survives(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.t")
    def t() -> None: ...

    t.send(queue=f"{unique}.plain")
    with pytest.raises(PublishError, match=f"exchange '{unique}.nope' does not exist"):
        t.send(exchange=f"{unique}.nope", routing_key="x")
    t.send(queue=f"{unique}.plain")
    assert app._sync is not None and app._sync.connections == 1  # the channel was never killed
    assert wait_count(channel, f"{unique}.plain", 2) == 2


def test_unreachable_broker_raises_broker_unavailable_naming_host_port() -> None:
    url, port = closed_port_url()
    app = App("unreachable", broker=url)

    @app.task
    def t() -> None: ...

    start = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        t.delay()
    assert time.monotonic() - start < app.settings.connect_timeout
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)


def test_ignore_result_get_fails_at_once(app: App, unique: str) -> None:
    @app.task(name=f"{unique}.fire", queue=f"{unique}.plain", ignore_result=True)
    def fire() -> None: ...

    result = fire.delay()
    start = time.monotonic()
    with pytest.raises(ResultUnavailable, match="ignore_result=True"):
        result.get(timeout=30)
    assert time.monotonic() - start < 0.1


# --- batches --------------------------------------------------------------------------------------


def test_send_many_and_batch(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    results = app.send_many([add.s(i, i) for i in range(500)])
    assert len(results) == 500 and len({r.id for r in results}) == 500
    with app.batch() as batch:
        inside = [add.delay(i, 1) for i in range(300)]
        assert wait_count(channel, f"{unique}.plain", 500, timeout=0.2) == 500  # nothing sent yet
    assert batch.results == inside
    assert wait_count(channel, f"{unique}.plain", 800) == 800


def test_send_many_reports_the_unroutable_one_and_sends_the_rest(app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    sigs = [add.s(1, 1), add.signature((2, 2), queue=f"{unique}.missing"), add.s(3, 3)]
    with pytest.raises(UnroutableError, match=f"{unique}.missing"):
        app.send_many(sigs)
    assert wait_count(channel, f"{unique}.plain", 2) == 2


def only_producer(app: App) -> Any:
    """The app's one sync producer (opened by a send before)."""
    assert app._sync is not None
    (producer,) = app._sync._state.all
    return producer


def test_messages_larger_than_the_socket_takes_at_once_arrive_whole(app: App, unique: str, channel: Any) -> None:
    """A write the socket takes only in part hands the rest to pika's writer, in order."""

    @app.task(name=f"{unique}.echo", queue=f"{unique}.plain", ignore_result=True)
    def echo(text: str) -> str:
        return text

    echo.delay("before")  # opens the producer
    producer = only_producer(app)
    sock = producer.connection._impl._transport._sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # so that writes are taken in part
    texts = [f"{i:02d}" + chr(ord("a") + i) * 1_500_000 for i in range(6)]  # 9 MB in one send_many
    app.send_many([echo.s(text) for text in texts])
    echo.delay("after")  # the single-send path still works after a partial write
    assert wait_count(channel, f"{unique}.plain", 8, timeout=20) == 8
    bodies = [orjson.loads(get_one(channel, f"{unique}.plain")[1])["args"][0] for _ in range(8)]
    assert bodies == ["before", *texts, "after"]


def count_calls(owner: Any, name: str) -> list[int]:
    """Count calls of ``owner.name`` (patched on the instance); the count is in the returned cell."""
    calls = [0]
    original = getattr(owner, name)

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return original(*args)

    setattr(owner, name, counting)
    return calls


def test_confirms_are_read_straight_off_a_plaintext_socket(app: App, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the fast path of a single send (sync/direct.py): a pika upgrade must not turn it off unnoticed."""
    monkeypatch.setenv("AMQPTASKS_FAST_PATHS", "1")  # about the fast path: on whatever the run's setting

    @app.task(name=f"{unique}.add", queue=f"{unique}.plain", ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 1)
    producer = only_producer(app)
    direct = producer.direct
    assert direct._transport is not None, "pika internals changed: single sends fall back to the slower I/O loop"
    impl = producer.connection._impl
    polls = count_calls(impl.ioloop._poller, "poll")
    pika_reads = count_calls(impl, "_on_data_available")
    for i in range(50):
        add.delay(i, i)
    assert polls[0] < 10, f"pika's loop ran {polls[0]} times for 50 single sends"
    assert pika_reads[0] < 10, f"pika's reader parsed {pika_reads[0]} reads for 50 single sends (the acks are read directly)"


def test_pikas_timers_run_while_direct_reads_keep_succeeding(app: App, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats are pika timers: a producer busy on the direct path must still give pika's loop a turn."""
    monkeypatch.setenv("AMQPTASKS_FAST_PATHS", "1")  # about the fast path: on whatever the run's setting
    # No turns by chance: a direct wait goes back to pika's loop after a quiet spell, which a busy
    # machine makes common; the loop must get its turns from LOOP_TURN_EVERY alone.
    monkeypatch.setattr(direct_module, "QUIET", 5.0)

    @app.task(name=f"{unique}.add", queue=f"{unique}.plain", ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(0, 0)
    producer = only_producer(app)
    turns = count_calls(producer.connection._impl.ioloop, "process_timeouts")
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        add.delay(1, 1)
    assert turns[0] >= 2, f"pika's loop ran {turns[0]} times in 2.5 s of sends"


# --- reconnects -----------------------------------------------------------------------------------


def test_the_next_send_after_the_connection_was_closed_succeeds(broker: Broker, app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    first = add.delay(1, 1)
    assert close_connections(broker, f"amqptasks producer {unique} ") == 1
    time.sleep(0.2)  # let the close reach the client socket
    add.delay(2, 2)
    assert app._sync is not None and app._sync._state.opened == 2  # a new connection, not a hang
    assert wait_count(channel, f"{unique}.plain", 2) == 2
    with pytest.raises(ResultUnavailable, match=r"connection .* is gone"):  # its reply channel died
        first.get(timeout=5)


def test_a_send_on_a_connection_closed_unnoticed_is_retried(broker: Broker, app: App, unique: str, channel: Any) -> None:
    @app.task(name=f"{unique}.add", queue=f"{unique}.plain")
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, 1)
    assert close_connections(broker, f"amqptasks producer {unique} ") == 1
    assert app._sync is not None
    for producer in app._sync._state.idle:
        producer.last_used = time.monotonic()  # skip the idle check: publish onto the dead socket
    add.delay(2, 2)
    assert app._sync._state.opened == 2
    assert wait_count(channel, f"{unique}.plain", 2) == 2  # resent once: the lost publish was never confirmed


def test_a_broker_that_stays_away_fails_the_send_after_bounded_retries(broker: Broker,
    tmp_path: Path, unique: str, cleanup: Any, broker_url: str
) -> None:
    settings = Settings(broker_url=broker_url, reconnect_attempts=3, reconnect_delay=0.05)
    app = queue_app(tmp_path, unique, cleanup, broker_url)
    app.settings = settings

    @app.task(name=f"{unique}.t", queue=unique)
    def t() -> None: ...

    try:
        t.delay()
        assert app._sync is not None
        app._sync.settings = settings.with_broker(closed_port_url()[0])  # reconnects now find nobody
        assert close_connections(broker, f"amqptasks producer {unique} ") == 1
        time.sleep(0.2)
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"lost the connection .* after 4 attempt"):
            t.delay()
        assert time.monotonic() - start < 2.0
    finally:
        app.close()


# --- confirms: nack and timeout -----------------------------------------------------------------


def test_a_nack_raises_publish_error(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> None:
    cleanup.queue(unique)
    path = tmp_path / "full.yaml"
    path.write_text(f"queues:\n  {unique}: {{max_length: 1, overflow: reject-publish}}\n")
    app = App(unique, broker=broker_url, topology=str(path))

    @app.task(name=f"{unique}.t", queue=unique, ignore_result=True)
    def t() -> None: ...

    try:
        t.delay()
        with pytest.raises(PublishError, match="nacked"):
            t.delay()
    finally:
        app.close()


def test_a_confirm_that_does_not_come_raises_publish_timeout(app: App, unique: str) -> None:
    @app.task(name=f"{unique}.t", queue=f"{unique}.plain")
    def t() -> None: ...

    t.delay()
    assert app._sync is not None
    producer = app._sync._state.idle[0]
    producer.settings = replace(producer.settings, confirm_timeout=0.3)
    producer._settle = lambda tag, ack: None  # type: ignore[method-assign]  # acks "never arrive"
    start = time.monotonic()
    with pytest.raises(PublishTimeout, match=r"not confirmed within 0\.3 s"):
        t.delay()
    assert 0.3 <= time.monotonic() - start < 1.0
    del producer._settle
    producer.settings = app.settings
    t.delay()  # the producer goes on; the timed-out message's tag was abandoned
