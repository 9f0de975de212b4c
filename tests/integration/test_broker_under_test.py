"""The test harness itself: every app a test builds goes to the broker under test, and a connection
to another known broker's port is refused and fails the test (tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest

from amqptasks import App
from amqptasks.management import ManagementEndpoint
from tests.conftest import _GUARD, KNOWN_BROKER_PORTS, Broker


def test_an_app_built_with_no_broker_uses_the_broker_under_test(broker: Broker) -> None:
    app = App("harness_probe")
    try:
        assert app.settings.broker_url == broker.url
        endpoint = ManagementEndpoint.from_settings(app.settings)
        if broker.management_port is None:
            assert endpoint is None
        else:
            assert endpoint is not None and endpoint.base_url.endswith(f":{broker.management_port}")
    finally:
        app.close()


def test_a_connection_to_another_brokers_port_is_refused_and_recorded(broker: Broker) -> None:
    other = min(KNOWN_BROKER_PORTS - broker.ports())
    before = len(_GUARD.violations)
    with pytest.raises(ConnectionRefusedError, match="a broker it was not given"):
        socket.create_connection(("127.0.0.1", other), timeout=1)
    assert len(_GUARD.violations) == before + 1
    del _GUARD.violations[before:]  # this test's own, on purpose: the autouse check must not fail it
