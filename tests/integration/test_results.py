"""Results over RPC, answered by a raw pika responder that follows docs/protocol.md with plain json.

The responder stands in for a worker written in another language: it reads the headers and body
as the protocol describes them and replies to ``reply_to`` with ``correlation_id``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from amqptasks import App, ResultTimeout, TaskError
from amqptasks.errors import AmqpTasksError
from tests.integration.test_send_sync import queue_app


class Responder:
    """Consumes ``queue`` in a thread and answers per protocol.md: add, boom, or silence."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.seen: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"responder {queue}", daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        assert self._ready.wait(10), "responder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            params = pika.URLParameters(self.broker_url)
            params.client_properties = {"connection_name": f"responder {self.queue}"}
            connection = pika.BlockingConnection(params)
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True)  # as the app's topology declares it
            channel.basic_qos(prefetch_count=100)
            channel.basic_consume(self.queue, self._on_message)
            self._ready.set()
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.05)
            connection.close()
        except BaseException as exc:  # surfaced by __exit__
            self._error = exc
            self._ready.set()

    def _on_message(self, channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        headers = props.headers or {}
        payload = json.loads(body)  # plain json, as another language would
        self.seen.append({"headers": headers, "payload": payload, "reply_to": props.reply_to})
        task = headers["task"]
        reply: dict[str, Any] | None
        if task.endswith(".add"):
            reply = {"id": headers["id"], "status": "SUCCESS", "result": sum(payload["args"])}
        elif task.endswith(".boom"):
            reply = {"id": headers["id"], "status": "FAILURE", "exc_type": "ValueError",
                     "exc_message": "boom", "traceback": "Traceback (most recent call last):\n  ...\nValueError: boom\n"}
        else:
            reply = None
        if reply is not None and props.reply_to:
            channel.basic_publish(
                "", props.reply_to, json.dumps(reply).encode(),
                pika.BasicProperties(correlation_id=props.correlation_id, content_type="application/json"),
            )
        channel.basic_ack(method.delivery_tag)


@pytest.fixture
def app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> Iterator[App]:
    the_app = queue_app(tmp_path, unique, cleanup, broker_url)
    yield the_app
    the_app.close()


def define(app: App, unique: str) -> tuple[Any, Any, Any]:
    @app.task(name=f"{unique}.add", queue=unique)
    def add(*numbers: int) -> int:
        return sum(numbers)

    @app.task(name=f"{unique}.boom", queue=unique)
    def boom() -> None:
        raise ValueError("boom")

    @app.task(name=f"{unique}.silent", queue=unique)
    def silent() -> None: ...

    return add, boom, silent


def test_get_returns_the_value(app: App, unique: str, broker_url: str) -> None:
    add, _, _ = define(app, unique)
    with Responder(broker_url, unique):
        result = add.delay(3, 4)
        assert result.get(timeout=10) == 7
        assert result.status == "SUCCESS" and result.ready() and result.successful() and result.result == 7
        assert result.get() == 7  # read again: kept on the result


def test_100_results_read_in_reverse_order(app: App, unique: str, broker_url: str) -> None:
    add, _, _ = define(app, unique)
    with Responder(broker_url, unique):
        results = [add.delay(i, 1000) for i in range(100)]
        assert [r.get(timeout=10) for r in reversed(results)] == [i + 1000 for i in reversed(range(100))]


def test_results_of_a_batch_in_any_order(app: App, unique: str, broker_url: str) -> None:
    add, _, _ = define(app, unique)
    with Responder(broker_url, unique):
        results = app.send_many([add.s(i, i) for i in range(200)])
        order = list(range(200))[::7] + [i for i in range(200) if i % 7]
        assert {i: results[i].get(timeout=10) for i in order} == {i: 2 * i for i in range(200)}


def test_failure_raises_task_error_with_the_remote_details(app: App, unique: str, broker_url: str) -> None:
    _, boom, _ = define(app, unique)
    with Responder(broker_url, unique):
        result = boom.delay()
        with pytest.raises(TaskError) as caught:
            result.get(timeout=10)
    error = caught.value
    assert error.exc_type == "ValueError" and error.exc_message == "boom" and "Traceback" in error.traceback
    assert error.task_id == result.id and result.status == "FAILURE" and isinstance(result.result, TaskError)


def test_no_reply_raises_result_timeout(app: App, unique: str, broker_url: str) -> None:
    _, _, silent = define(app, unique)
    with Responder(broker_url, unique):
        result = silent.delay()
        start = time.monotonic()
        with pytest.raises(ResultTimeout) as caught:
            result.get(timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 2.0
        assert isinstance(caught.value, TimeoutError) and result.id in str(caught.value)
        assert result.status == "PENDING" and not result.ready()


def test_get_from_other_threads_while_this_one_sends(app: App, unique: str, broker_url: str) -> None:
    add, _, _ = define(app, unique)
    with Responder(broker_url, unique):
        results = [add.delay(i, 1) for i in range(50)]
        values: dict[int, int] = {}
        errors: list[BaseException] = []

        def read(index: int) -> None:
            try:
                values[index] = results[index].get(timeout=15)
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read, args=(i,)) for i in range(50)]
        for thread in readers:
            thread.start()
        more = [add.delay(i, 2) for i in range(50)]  # the sender keeps using the same connection
        for thread in readers:
            thread.join(20)
        assert not errors and values == {i: i + 1 for i in range(50)}
        assert [r.get(timeout=10) for r in more] == [i + 2 for i in range(50)]


def test_a_send_is_not_held_up_by_a_get_waiting_on_the_same_connection(app: App, unique: str, broker_url: str) -> None:
    """The waiting get() hands the connection over at once when woken (sync/direct.py watches the wake)."""
    add, _, silent = define(app, unique)
    with Responder(broker_url, unique) as responder:
        add.delay(0, 0).get(timeout=5)  # one producer, open
        waiting = silent.delay()

        def read() -> None:
            with pytest.raises(ResultTimeout):
                waiting.get(timeout=4)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.2)  # the reader now pumps the only connection; no reply will wake it
        took = []
        for _ in range(20):
            time.sleep(0.01)  # the reader takes the connection back in between
            start = time.monotonic()
            silent.delay()
            took.append(time.monotonic() - start)
        assert app._sync is not None and app._sync._state.opened == 1
        assert statistics.median(took) < 0.02, f"sends took {sorted(took)} s while a get() waited"
        reader.join(10)
        assert not reader.is_alive()
        assert sum(1 for seen in responder.seen if seen["headers"]["task"] == f"{unique}.silent") == 21


def test_dropped_results_are_not_kept(app: App, unique: str, broker_url: str) -> None:
    add, _, _ = define(app, unique)
    with Responder(broker_url, unique) as responder:
        kept = add.delay(1, 1)
        for i in range(30):
            add.delay(i, i)  # AsyncResult dropped at once
        assert kept.get(timeout=10) == 2
        deadline = time.monotonic() + 5
        while len(responder.seen) < 31 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert app._sync is not None
    replies = app._sync._state.all[0].replies
    replies.poll("nothing")  # pump what arrived
    assert replies.held == 0


def test_async_results_in_any_order(app: App, unique: str, broker_url: str) -> None:
    add, boom, silent = define(app, unique)

    async def scenario() -> None:
        results = [await add.adelay(i, 1) for i in range(100)]
        values = await asyncio.gather(*(r.aget(timeout=10) for r in reversed(results)))
        assert values == [i + 1 for i in reversed(range(100))]
        many = await app.asend_many([add.s(i, 2) for i in range(100)])
        assert [await r.aget(timeout=10) for r in reversed(many)] == [i + 2 for i in reversed(range(100))]
        with pytest.raises(TaskError, match="ValueError: boom"):
            await (await boom.adelay()).aget(timeout=10)
        with pytest.raises(ResultTimeout):
            await (await silent.adelay()).aget(timeout=0.3)
        with pytest.raises(AmqpTasksError, match="would block the event loop"):
            (await silent.adelay()).get(timeout=1)  # not arrived (never will): get() must not block the loop
        elsewhere = await add.adelay(5, 5)
        assert await asyncio.to_thread(elsewhere.get, 10) == 10  # get() from another thread works
        sync_sent = add.delay(6, 6)  # a sync-sent result can be awaited too
        assert await sync_sent.aget(timeout=10) == 12
        await app.aclose()

    with Responder(broker_url, unique):
        asyncio.run(scenario())
