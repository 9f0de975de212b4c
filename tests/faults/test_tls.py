"""TLS: sync sends, async sends and a worker over ``amqps://`` with a test CA; wrong CAs fail clearly.

The private node has a TLS listener whose certificate (CN/SAN localhost, 127.0.0.1) is signed by a
throwaway CA (``fault_broker.ca_file``); it verifies client certificates when one is presented.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pika
import pytest

from amqptasks import App
from amqptasks.errors import AmqpTasksError, BrokerUnavailable
from amqptasks.settings import Settings
from tests.faults.conftest import (
    LEDGER_TASKS,
    FaultApp,
    FaultBroker,
    make_ca,
    make_signed,
)
from tests.faults.ledger import record, tally, wait_complete
from tests.integration.workerproc import WorkerProcess

TASKS = LEDGER_TASKS + """
@app.task(queue=QUEUE)
def add(x, y):
    return x + y
"""
PER_KIND = 200  # tasks sent sync and again async, all run by a worker connected over TLS


def consumers(broker: FaultBroker, queue: str) -> int:
    """Consumers of ``queue``, read over the plain listener (the test's own view, not the client's)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # not declared yet
    finally:
        if connection.is_open:
            connection.close()


def wait_consuming(broker: FaultBroker, worker: WorkerProcess, queue: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while consumers(broker, queue) < 1:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the TLS worker is not consuming (exit {worker.process.poll()}):\n{worker.log}")
        time.sleep(0.1)


def tls_connections(broker: FaultBroker) -> list[tuple[bool, str]]:
    """(uses TLS, client properties) of every connection, from the node itself."""
    rows = broker.ctl("list_connections", "ssl", "client_properties", "--no-table-headers", "--quiet").splitlines()
    split = (row.split("\t", 1) for row in rows if "\t" in row)
    return [(flag.strip() == "true", properties) for flag, properties in split]


@pytest.mark.timeout(120)
def test_sync_async_and_worker_over_tls(
    fault_broker: FaultBroker, fault_app: Callable[..., FaultApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMQPTASKS_BROKER_URL", fault_broker.tls_url)
    monkeypatch.setenv("AMQPTASKS_TLS_CA_FILE", str(fault_broker.ca_file))
    app = fault_app(url=fault_broker.tls_url, body=TASKS)
    started = time.monotonic()
    worker = app.worker(processes=1)  # inherits AMQPTASKS_TLS_CA_FILE
    tasks: ModuleType | None = None
    try:
        wait_consuming(fault_broker, worker, app.queue)
        tasks = app.import_tasks()
        assert tasks.app.settings.address.scheme == "amqps"
        assert tasks.add.delay(3, 4).get(timeout=20) == 7
        sent = [tasks.work.delay(n).id for n in range(PER_KIND)]

        async def send_async() -> tuple[int, list[str]]:
            assert tasks is not None
            result = await (await tasks.add.adelay(5, 6)).aget(timeout=20)
            ids = [(await tasks.work.adelay(n)).id for n in range(PER_KIND)]
            # Before closing: every amqptasks connection to the node (producers, worker) uses TLS.
            seen = tls_connections(fault_broker)
            ours = [tls for tls, properties in seen if "amqptasks" in properties]
            assert len(ours) >= 3 and all(ours), seen  # sync producer, async producer, worker
            await tasks.app.aclose()
            return result, ids

        async_result, async_ids = asyncio.run(send_async())
        assert async_result == 11
        sent += async_ids
        wait_complete(sent, app.done, timeout=60)
        result = record(tally("TLS", sent, app.done, started, detail="sync + async sends and a worker over amqps://, test CA"))
        assert result.lost == 0 and result.sent == 2 * PER_KIND
    finally:
        if tasks is not None:
            app.close(tasks)
        worker.signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=40) == 0, worker.log
        finally:
            worker.stop()


def assert_clear_tls_error(error: AmqpTasksError, broker: FaultBroker, *needles: str) -> None:
    message = str(error)
    assert isinstance(error, BrokerUnavailable), repr(error)
    assert f"localhost:{broker.tls_port}" in message, message
    assert "guest:guest" not in message and "is RabbitMQ running" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.timeout(90)
def test_a_wrong_or_missing_ca_fails_clearly_sync_async_and_worker(
    fault_broker: FaultBroker, tmp_path: Path, fault_app: Callable[..., FaultApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_ca, _key = make_ca(tmp_path, "wrong")
    for ca in (str(wrong_ca), None):  # another CA; none at all (the system store does not know ours)
        settings = Settings(broker_url=fault_broker.tls_url, tls_ca_file=ca)
        app = App("tls_wrong", settings=settings)

        @app.task(queue="never-declared", ignore_result=True)
        def nothing() -> None: ...

        try:
            with pytest.raises(BrokerUnavailable) as sync_error:
                nothing.delay()
            assert_clear_tls_error(sync_error.value, fault_broker, "certificate", "AMQPTASKS_TLS_CA_FILE")

            async def send() -> None:
                await nothing.adelay()

            with pytest.raises(BrokerUnavailable) as async_error:
                asyncio.run(send())
            assert_clear_tls_error(async_error.value, fault_broker, "certificate", "AMQPTASKS_TLS_CA_FILE")
        finally:
            app.close()

    # The worker says the same and exits instead of retrying forever.
    monkeypatch.setenv("AMQPTASKS_BROKER_URL", fault_broker.tls_url)
    monkeypatch.setenv("AMQPTASKS_TLS_CA_FILE", str(wrong_ca))
    worker = fault_app(url=fault_broker.tls_url).worker(processes=1)
    try:
        code = worker.wait(timeout=60)
    finally:
        worker.stop()
    assert code != 0, worker.log
    assert "AMQPTASKS_TLS_CA_FILE" in worker.log and f"localhost:{fault_broker.tls_port}" in worker.log, worker.log


@pytest.mark.timeout(60)
def test_client_certificates_are_used_and_a_foreign_one_is_refused(fault_broker: FaultBroker, tmp_path: Path) -> None:
    good = Settings(
        broker_url=fault_broker.tls_url,
        tls_ca_file=str(fault_broker.ca_file),
        tls_cert_file=str(fault_broker.client_cert),
        tls_key_file=str(fault_broker.client_key),
    )
    from amqptasks.sync.connection import connect

    connect(good, "amqptasks tls client-cert test").close()
    foreign_ca = make_ca(tmp_path, "foreign")
    cert, key = make_signed(tmp_path, "foreign-client", foreign_ca, server=False)
    bad = Settings(broker_url=fault_broker.tls_url, tls_ca_file=str(fault_broker.ca_file),
                   tls_cert_file=str(cert), tls_key_file=str(key))  # fmt: skip
    with pytest.raises(BrokerUnavailable) as refused:
        connect(bad, "amqptasks tls foreign-cert test").close()
    assert f"localhost:{fault_broker.tls_port}" in str(refused.value), refused.value
    assert "TLS" in str(refused.value), refused.value
