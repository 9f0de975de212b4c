"""Test harness: a real RabbitMQ for every integration test, unique names, cleanup, timeouts.

Broker choice, first that works: ``AMQPTASKS_TEST_URL`` → a testcontainers RabbitMQ (pinned image)
when a Docker engine answers → the local broker. If none answers the run FAILS: integration tests
are never skipped. The ``broker`` fixture describes it (AMQP URL, management API, ``rabbitmqctl``);
a guard fails any test that connects to another known broker port.

RabbitMQ 4 (scripts/rabbitmq4.sh)::

    AMQPTASKS_TEST_URL=amqp://guest:guest@127.0.0.1:5673/%2F AMQPTASKS_TEST_MGMT_URL=http://guest:guest@127.0.0.1:15673 \\
    AMQPTASKS_TEST_CTL="scripts/rabbitmq4.sh ctl" python -m pytest tests/unit tests/integration
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
LOCAL_MGMT_URL = "http://guest:guest@127.0.0.1:15672"
RABBITMQ_IMAGE = "rabbitmq:3.13.7-management"
ROOT = Path(__file__).resolve().parent.parent
# Ports of the brokers this machine may run (the shared 3.10 broker, the RabbitMQ 4 node, a private
# cluster): a test process may connect to one of them only when it is the broker under test.
KNOWN_BROKER_PORTS = frozenset({5671, 5672, 5673, 15671, 15672, 15673, 5681, 5682, 5683, 15681, 15682, 15683})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"})


@dataclass(frozen=True)
class Broker:
    """The broker under test: its AMQP URL, its management API and its ``rabbitmqctl``.

    Every App, worker, CLI run, management call and ``rabbitmqctl`` a test makes goes here. From the
    environment: ``AMQPTASKS_TEST_URL`` (AMQP), ``AMQPTASKS_TEST_MGMT_URL`` (``http://user:pass@host:port``
    or ``off``) and ``AMQPTASKS_TEST_CTL`` (a command that is ``rabbitmqctl`` for that broker, e.g.
    ``scripts/rabbitmq4.sh ctl``). For the local broker (port 5672) both default to the local ones.
    """

    url: str
    management_url: str | None = None  # with credentials; None: this broker has no API for tests
    ctl_command: tuple[str, ...] | None = None  # None: no rabbitmqctl reaches this broker

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 5672

    @property
    def management_port(self) -> int | None:
        return urlsplit(self.management_url).port if self.management_url else None

    def ports(self) -> set[int]:
        return {self.port} | ({self.management_port} if self.management_port else set())

    def env(self) -> dict[str, str]:
        """``AMQPTASKS_*`` variables that point apps, workers and the CLI at this broker. The
        management URL carries no credentials: each client uses its own AMQP user's, as it would
        against the standard ports."""
        management = "off"
        if self.management_url is not None:
            parts = urlsplit(self.management_url)
            management = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        return {"AMQPTASKS_BROKER_URL": self.url, "AMQPTASKS_MANAGEMENT_URL": management}

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """``rabbitmqctl ARGS`` on this broker (its stdout); fails the test when it cannot or it fails."""
        if self.ctl_command is None:
            pytest.fail(f"this test runs rabbitmqctl, but none is known for {self.host}:{self.port}: "
                        "set AMQPTASKS_TEST_CTL (e.g. 'scripts/rabbitmq4.sh ctl')")
        done = subprocess.run([*self.ctl_command, *args], check=False, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)} on {self.host}:{self.port} exited {done.returncode}: "
                        f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def api(self, path: str, method: str = "GET", body: bytes | None = None, timeout: float = 10) -> Any:
        """A management API call (``/api/...``) on this broker; the decoded JSON or ``None``."""
        if self.management_url is None:
            pytest.fail(f"this test uses the management API, but none is known for {self.host}:{self.port}: "
                        "set AMQPTASKS_TEST_MGMT_URL")
        parts = urlsplit(self.management_url)
        auth = base64.b64encode(f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}".encode()).decode()
        base = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
        request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def version(self) -> tuple[int, ...]:
        """The broker's version, e.g. ``(4, 0, 5)`` (from the management API)."""
        text = str(self.api("/api/overview")["rabbitmq_version"])
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _answers(url: str, timeout: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(parts.hostname or "127.0.0.1", parts.port or 5672,
                                                                    type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                if _real_connect_ex(sock, address) == 0:  # unguarded: choosing the broker is no test
                    return True
    except OSError:
        return False
    return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # any failure means "no Docker engine"
        return False


def _from_env(url: str) -> Broker:
    parts = urlsplit(url)
    local = parts.hostname in LOOPBACK and (parts.port or 5672) == 5672
    mgmt = os.environ.get("AMQPTASKS_TEST_MGMT_URL") or (LOCAL_MGMT_URL if local else None)
    if mgmt is not None and mgmt.strip().lower() == "off":
        mgmt = None
    ctl_text = os.environ.get("AMQPTASKS_TEST_CTL")
    ctl = tuple(shlex.split(ctl_text)) if ctl_text else (("rabbitmqctl",) if local and shutil.which("rabbitmqctl") else None)
    return Broker(url, mgmt, ctl)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The broker under test. Fails the run (never skips) when there is none.

    Choice, first that works: ``AMQPTASKS_TEST_URL`` → a testcontainers RabbitMQ (pinned image) when
    a Docker engine answers → the local broker. For the whole session the ``AMQPTASKS_*`` variables
    point at it, so every App a test builds, and every worker or CLI it starts, uses it; the guard
    (:func:`_only_the_broker_under_test`) fails a test that connects to another broker's port.
    """
    explicit = os.environ.get("AMQPTASKS_TEST_URL")
    chosen: Broker | None = None
    container = None
    if explicit:
        if not _answers(explicit):
            pytest.fail(f"AMQPTASKS_TEST_URL is set but no broker answers at {urlsplit(explicit).netloc.split('@')[-1]}")
        chosen = _from_env(explicit)
    elif _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer(RABBITMQ_IMAGE)
        container.start()
        host = container.get_container_host_ip()
        chosen = Broker(f"amqp://guest:guest@{host}:{container.get_exposed_port(5672)}/%2F",
                        f"http://guest:guest@{host}:{container.get_exposed_port(15672)}",
                        ("docker", "exec", container.get_wrapped_container().id, "rabbitmqctl"))
    elif _answers(LOCAL_URL):
        chosen = _from_env(LOCAL_URL)
    else:
        pytest.fail(
            "no RabbitMQ for integration tests: set AMQPTASKS_TEST_URL, start a Docker engine, or run "
            "./scripts/rabbitmq.sh to start the local broker (integration tests are never skipped)"
        )
    _GUARD.allowed |= chosen.ports()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in chosen.env().items():
            patch.setenv(name, value)
        try:
            yield chosen
        finally:
            if container is not None:
                container.stop()


@pytest.fixture(scope="session")
def broker_url(broker: Broker) -> str:
    """The AMQP URL of the broker under test (see :func:`broker`)."""
    return broker.url


# --- the guard: no test touches a broker it was not given -----------------------------------------


@dataclass
class _Guard:
    """Refuses (and records) connections from this process to a known broker port not under test."""

    allowed: set[int] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def check(self, address: Any) -> None:
        if not isinstance(address, tuple) or len(address) < 2:
            return
        host, port = str(address[0]), address[1]
        if host in LOOPBACK and port in KNOWN_BROKER_PORTS and port not in self.allowed:
            message = (f"a test connected to {host}:{port}, a broker it was not given (under test: ports "
                       f"{sorted(self.allowed) or 'none'}); use the broker / broker_url fixture")
            self.violations.append(message)
            raise ConnectionRefusedError(message)


_GUARD = _Guard()
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _GUARD.check(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _GUARD.check(address)
    return _real_connect_ex(self, address)


def allow_ports(*ports: int) -> None:
    """Let tests connect to these ports too (a fixture that started a broker of its own)."""
    _GUARD.allowed.update(ports)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _only_the_broker_under_test() -> Iterator[None]:
    """Fail a test that connected to a known broker port other than the broker under test's,
    even when the code under test swallowed the refused connection."""
    before = len(_GUARD.violations)
    yield
    if len(_GUARD.violations) > before:
        pytest.fail("; ".join(sorted(set(_GUARD.violations[before:]))), pytrace=False)


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
    # Everything under tests/integration or tests/faults talks to the broker under test: it is set
    # up (and the AMQPTASKS_* variables point at it) before any of them runs.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.usefixtures("broker"))
        if f"{os.sep}faults{os.sep}" in path:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.usefixtures("broker"))
