"""Test harness: a real RabbitMQ for every integration test, unique names, cleanup, timeouts.

Broker choice, first that works: ``AMQPTASKS_TEST_URL`` → a testcontainers RabbitMQ (pinned image)
when a Docker engine answers → the local broker. If none answers the run FAILS: integration tests
are never skipped.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pika
import pytest

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RABBITMQ_IMAGE = "rabbitmq:3.13.7-management"


def _answers(url: str, timeout: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=timeout):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The URL of a real, running RabbitMQ. Fails the run (never skips) when there is none."""
    explicit = os.environ.get("AMQPTASKS_TEST_URL")
    if explicit:
        if not _answers(explicit):
            pytest.fail(f"AMQPTASKS_TEST_URL is set but no broker answers at {urlsplit(explicit).netloc.split('@')[-1]}")
        yield explicit
        return
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer(RABBITMQ_IMAGE) as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/%2F"
        return
    if _answers(LOCAL_URL):
        yield LOCAL_URL
        return
    pytest.fail(
        "no RabbitMQ for integration tests: set AMQPTASKS_TEST_URL, start a Docker engine, or run "
        "./scripts/rabbitmq.sh to start the local broker (integration tests are never skipped)"
    )


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name prefix unique to this test: ``t.<test name>.<random>``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"t.{name}.{uuid.uuid4().hex[:8]}"


@dataclass
class Cleanup:
    """Collects entity names a test declared; deletes them after the test, whatever happened."""

    queues: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    def queue(self, name: str) -> str:
        self.queues.add(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.add(name)
        return name


@pytest.fixture
def cleanup(broker_url: str, request: pytest.FixtureRequest, unique: str) -> Iterator[Cleanup]:
    """Register names to delete, or let the prefix from ``unique`` be swept after the test."""
    tracker = Cleanup()
    yield tracker
    params = pika.URLParameters(broker_url)
    params.client_properties = {"connection_name": f"cleanup {request.node.nodeid}"}
    connection = pika.BlockingConnection(params)
    try:
        from amqptasks.core.delays import landing_queue

        # A queue's delay landing queue (declared with it by apps and workers) goes with it.
        for name in sorted(tracker.queues | {landing_queue("", q) for q in tracker.queues}):
            channel = connection.channel()
            channel.queue_delete(name)
            channel.close()
        for name in sorted(tracker.exchanges):
            channel = connection.channel()
            channel.exchange_delete(name)
            channel.close()
    finally:
        connection.close()


@pytest.fixture
def channel(broker_url: str, request: pytest.FixtureRequest) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A raw pika channel on a connection labelled with the test's id (visible in the management UI)."""
    params = pika.URLParameters(broker_url)
    params.client_properties = {"connection_name": f"test {request.node.nodeid}"}
    connection = pika.BlockingConnection(params)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration or tests/faults talks to the broker.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        if f"{os.sep}faults{os.sep}" in path:
            item.add_marker(pytest.mark.faults)
