"""Failover between broker addresses (issue 17 items 3-4), on the one test broker: a list whose first
address is a closed port, and a list naming the same broker twice (two host spellings), so that a
lost connection shows which address the publishers move to. The 3-node runs are in
tests/faults/test_cluster.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from amqptasks import App
from tests.conftest import Broker
from tests.integration.test_send_sync import (
    close_connections,
    closed_port_url,
    count,
    queue_app,
    wait_count,
)


def other_spelling(broker_url: str) -> str:
    """The same broker under another host name (127.0.0.1 <-> localhost)."""
    host = urlsplit(broker_url).hostname
    swap = "localhost" if host == "127.0.0.1" else "127.0.0.1"
    return broker_url.replace(f"@{host}:", f"@{swap}:", 1)


def make_app(tmp_path: Path, unique: str, cleanup: Any, broker: list[str]) -> tuple[App, Any]:
    base = queue_app(tmp_path, unique, cleanup, broker[-1])
    app = App(unique, broker=broker, topology=[str(p) for p in base.topology_paths])

    @app.task(name=f"{unique}.t", queue=unique)
    def t(n: int) -> None: ...

    return app, t


def test_sync_skips_a_closed_first_address(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any) -> None:
    closed, _port = closed_port_url()
    app, t = make_app(tmp_path, unique, cleanup, [closed, broker_url])
    try:
        t.delay(1)
        [producer] = app._sync._current().all  # type: ignore[union-attr]
        assert producer.address.port == urlsplit(broker_url).port
        assert wait_count(channel, unique, 1) == 1
    finally:
        app.close()


def test_async_skips_a_closed_first_address(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any) -> None:
    closed, _port = closed_port_url()
    app, t = make_app(tmp_path, unique, cleanup, [closed, broker_url])

    async def main() -> int:
        await t.adelay(1)
        [producer] = app._async._producers.values()  # type: ignore[union-attr]
        await app.aclose()
        return producer.address.port

    assert asyncio.run(main()) == urlsplit(broker_url).port
    assert wait_count(channel, unique, 1) == 1


def test_sync_moves_to_the_next_address_after_a_loss(
    tmp_path: Path, unique: str, cleanup: Any, broker_url: str, broker: Broker, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    second = other_spelling(broker_url)
    app, t = make_app(tmp_path, unique, cleanup, [broker_url, second])
    caplog.set_level(logging.INFO, logger="amqptasks.publisher")
    try:
        t.delay(1)
        assert close_connections(broker, f"amqptasks producer {unique} ") == 1
        t.delay(2)  # the lost connection is noticed, the next one opens on the second address
        hosts = [p.address.host for p in app._sync._current().all]  # type: ignore[union-attr]
        assert hosts == [urlsplit(second).hostname], hosts
        assert f"connected to the broker node at {urlsplit(second).hostname}:" in caplog.text
        assert wait_count(channel, unique, 2) >= 2
    finally:
        app.close()


def test_async_moves_to_the_next_address_after_a_loss(
    tmp_path: Path, unique: str, cleanup: Any, broker_url: str, broker: Broker, channel: Any
) -> None:
    second = other_spelling(broker_url)
    app, t = make_app(tmp_path, unique, cleanup, [broker_url, second])

    async def main() -> str:
        await t.adelay(1)
        assert await asyncio.to_thread(close_connections, broker, f"amqptasks async producer {unique} ") == 1
        await asyncio.sleep(0.3)
        await t.adelay(2)
        [producer] = app._async._producers.values()  # type: ignore[union-attr]
        await app.aclose()
        return producer.address.host

    assert asyncio.run(main()) == urlsplit(second).hostname
    assert count(channel, unique) >= 2


def test_no_node_answers_names_every_node_sync_and_async(tmp_path: Path, unique: str, cleanup: Any, broker_url: str) -> None:
    from amqptasks.errors import BrokerUnavailable

    (first, port1), (second, port2) = closed_port_url(), closed_port_url()
    app, t = make_app(tmp_path, unique, cleanup, [first, second])
    expected = f"127.0.0.1:{port1} (ConnectionRefusedError), 127.0.0.1:{port2} (ConnectionRefusedError)"
    try:
        with pytest.raises(BrokerUnavailable) as sync_error:
            t.delay(1)

        async def main() -> BrokerUnavailable:
            with pytest.raises(BrokerUnavailable) as async_error:
                await t.adelay(1)
            return async_error.value

        for error in (sync_error.value, asyncio.run(main())):
            text = str(error)
            assert expected in text and "cannot reach any of the 2 broker nodes" in text, text
            assert "rabbitmq.sh" not in text and "s3cret" not in text
    finally:
        app.close()
