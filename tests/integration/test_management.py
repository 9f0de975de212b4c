"""The management API reader against the real broker: what it observes, how it fails, and that
it never leaks the password."""

from __future__ import annotations

import logging
import time
import urllib.request
from typing import Any

import pika
import pytest

from amqptasks.core.topology import Binding
from amqptasks.management import ManagementEndpoint, observe, observe_endpoint
from amqptasks.settings import Settings

SECRET = "s3cr3t-Pa55"


def declared(arguments: Any) -> dict[str, Any]:
    """A queue's arguments as declared: RabbitMQ 4 reports ``x-queue-type: classic`` on every classic
    queue, declared with it or not (3.x reports nothing)."""
    return {k: v for k, v in dict(arguments).items() if (k, v) != ("x-queue-type", "classic")}


def require_management(broker_url: str) -> str:
    """The base URL of the broker's management API; fails the test (never skips) when it does not
    answer."""
    endpoint = ManagementEndpoint.from_amqp_url(broker_url)
    assert endpoint is not None
    if observe_endpoint(endpoint, timeout=3) is None:
        pytest.fail(f"the management API at {endpoint.base_url} does not answer; enable the plugin "
                    "(rabbitmq-plugins enable rabbitmq_management) or set AMQPTASKS_MANAGEMENT_URL")
    return endpoint.base_url


@pytest.fixture
def management_url(broker_url: str) -> str:
    """The broker's management API (see :func:`require_management`)."""
    return require_management(broker_url)


class TestManagementApiForTopology:
    """What the topology planner reads from the management API (named so `-k topology` selects it)."""

    def test_observe_reports_arguments_and_bindings(
        self,
        broker_url: str, management_url: str, unique: str, cleanup: Any, channel: Any
    ) -> None:
        exchange, queue = cleanup.exchange(f"{unique}.x"), cleanup.queue(f"{unique}.q")
        channel.exchange_declare(exchange, "topic", durable=True, arguments={"alternate-exchange": "nowhere"})
        channel.queue_declare(queue, durable=True, arguments={"x-message-ttl": 60000, "x-max-length": 10})
        channel.queue_bind(queue, exchange, routing_key="a.*")
        channel.queue_bind(queue, exchange, routing_key="b", arguments={"x-note": "kept"})

        observed = observe(Settings(broker_url=broker_url), management_url=management_url)

        assert observed is not None and observed.exchanges is not None and observed.queues is not None
        seen_exchange = observed.exchanges[exchange]
        assert (seen_exchange.type, seen_exchange.durable, seen_exchange.internal) == ("topic", True, False)
        assert dict(seen_exchange.arguments) == {"alternate-exchange": "nowhere"}
        seen_queue = observed.queues[queue]
        assert (seen_queue.durable, seen_queue.auto_delete, seen_queue.exclusive) == (True, False, False)
        assert declared(seen_queue.arguments) == {"x-message-ttl": 60000, "x-max-length": 10}
        assert observed.bindings is not None
        assert Binding(exchange, queue, routing_key="a.*").key in observed.bindings
        assert Binding(exchange, queue, routing_key="b", arguments={"x-note": "kept"}).key in observed.bindings
        assert Binding(exchange, queue, routing_key="c").key not in observed.bindings


    def test_observe_makes_three_requests_whatever_the_entity_count(
        self,
        broker_url: str, management_url: str, unique: str, cleanup: Any, channel: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for i in range(40):
            # exclusive: RabbitMQ 4.3 refuses transient non-exclusive queues
            channel.queue_declare(cleanup.queue(f"{unique}.q{i}"), exclusive=True)
        calls: list[str] = []
        real_urlopen = urllib.request.urlopen

        def counting_urlopen(request: urllib.request.Request, *args: Any, **kwargs: Any) -> Any:
            calls.append(request.full_url)
            return real_urlopen(request, *args, **kwargs)

        monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
        observed = observe(Settings(broker_url=broker_url), management_url=management_url)
        assert observed is not None and observed.queues is not None
        assert all(f"{unique}.q{i}" in observed.queues for i in range(40))
        assert len(calls) == 3
        assert all(SECRET not in url and "guest:guest" not in url for url in calls)


    def test_unreachable_or_disabled_api_means_none(self, broker_url: str) -> None:
        settings = Settings(broker_url=broker_url)
        started = time.monotonic()
        assert observe(settings, management_url="http://127.0.0.1:1") is None
        assert observe(settings, management_url="off") is None
        assert time.monotonic() - started < 3


    def test_env_variable_overrides_and_may_carry_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AMQPTASKS_MANAGEMENT_URL", "https://admin:pw%40x@mgmt.example:8443/rabbit/")
        endpoint = ManagementEndpoint.from_amqp_url("amqp://app:apppw@broker.example:5672/prod")
        assert endpoint is not None
        assert (endpoint.base_url, endpoint.vhost, endpoint.username, endpoint.password) == (
            "https://mgmt.example:8443/rabbit", "prod", "admin", "pw@x")
        assert "pw@x" not in repr(endpoint)
        monkeypatch.setenv("AMQPTASKS_MANAGEMENT_URL", "off")
        assert ManagementEndpoint.from_amqp_url("amqp://app:apppw@broker.example:5672/prod") is None
        monkeypatch.delenv("AMQPTASKS_MANAGEMENT_URL")
        default = ManagementEndpoint.from_amqp_url("amqps://app:apppw@broker.example/%2F")
        assert default is not None and (default.base_url, default.vhost) == ("https://broker.example:15671", "/")
        # Another AMQP port means another node (or a mapped container port): its API is not at
        # host:15672, so there is no guess that could read a different broker's state.
        assert ManagementEndpoint.from_amqp_url("amqp://app:apppw@127.0.0.1:5674/%2F") is None
        assert ManagementEndpoint.from_amqp_url("amqp://app:apppw@127.0.0.1:5672/%2F") is not None


    def test_wrong_password_returns_none_and_never_logs_it(
        self,
        broker_url: str, management_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        params = pika.URLParameters(broker_url)
        wrong = f"amqp://{params.credentials.username}:{SECRET}@{params.host}:{params.port}/%2F"
        with caplog.at_level(logging.DEBUG, logger="amqptasks"):
            assert observe(Settings(broker_url=wrong), management_url=management_url) is None
        assert "HTTP 401" in caplog.text
        assert SECRET not in caplog.text
