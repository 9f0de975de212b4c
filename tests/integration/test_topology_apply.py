"""Planning and applying topology files against the real broker, with the management API and
with declare probes only, through the pika and the aio-pika adapters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from amqptasks.aio.connection import aconnect
from amqptasks.aio.topology import aapply, aplan, aprovision
from amqptasks.core.loader import load_topology_text
from amqptasks.core.plan_types import Difference
from amqptasks.core.topology import Topology
from amqptasks.errors import TopologyConflict
from amqptasks.management import observe
from amqptasks.settings import Settings
from amqptasks.sync.connection import connect
from amqptasks.sync.topology import apply, plan, provision
from tests.integration.test_management import declared, require_management

#: A management URL nothing answers at: the adapters must fall back to declare probes.
NO_MANAGEMENT = "http://127.0.0.1:1"


def topology_yaml(prefix: str, *, ttl: str = "1m", extra_queue: bool = False) -> str:
    """A small but complete topology named after ``prefix``: topic, fanout (bound exchange to
    exchange) and direct exchanges; queues with TTL, length limit and dead-lettering."""
    text = f"""
exchanges:
  {prefix}.events:
    type: topic
  {prefix}.audit:
    type: fanout
    bindings:
      - {{exchange: {prefix}.events, routing_key: "#"}}
  {prefix}.dead:
    type: direct
queues:
  {prefix}.work:
    message_ttl: {ttl}
    max_length: 1000
    dead_letter: {{exchange: {prefix}.dead, routing_key: {prefix}.work}}
    bindings:
      - {{exchange: {prefix}.events, routing_key: "work.*"}}
  {prefix}.audit.log:
    bindings:
      - {{exchange: {prefix}.audit}}
  {prefix}.dead.letters:
    bindings:
      - {{exchange: {prefix}.dead, routing_key: {prefix}.work}}
"""
    if extra_queue:
        text += f"""  {prefix}.added:
    bindings:
      - {{exchange: {prefix}.events, routing_key: "added.*"}}
"""
    return text


def register(cleanup: Any, prefix: str) -> None:
    """Every name topology_yaml(prefix, extra_queue=True) can declare, for deletion after the test."""
    for suffix in ("events", "audit", "dead"):
        cleanup.exchange(f"{prefix}.{suffix}")
    for suffix in ("work", "audit.log", "dead.letters", "added"):
        cleanup.queue(f"{prefix}.{suffix}")


def load(prefix: str, **kwargs: Any) -> Topology:
    return load_topology_text(topology_yaml(prefix, **kwargs), f"{prefix}.yaml")


def queue_exists(channel_factory: Any, name: str) -> bool:
    channel = channel_factory()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    channel.close()
    return True


@pytest.fixture
def management_url(broker_url: str) -> str:
    return require_management(broker_url)


@pytest.fixture
def settings(broker_url: str) -> Settings:
    return Settings(broker_url=broker_url)


@pytest.fixture
def connection(settings: Settings) -> Iterator[pika.BlockingConnection]:
    conn = connect(settings, "test topology apply")
    yield conn
    if conn.is_open:
        conn.close()


def test_apply_twice_second_changes_nothing(
    settings: Settings, connection: pika.BlockingConnection, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    topology = load(unique)

    first = apply(connection, topology, management_url=management_url)
    assert first.changed
    assert {e.name for e in first.created if e.kind == "queue"} == {
        f"{unique}.work", f"{unique}.audit.log", f"{unique}.dead.letters"}
    assert f"created queue {unique}.work (classic)" in first.render()

    # Exactly the arguments the file says, no more: the management API's view...
    observed = observe(settings, management_url=management_url)
    assert observed is not None and observed.queues is not None and observed.bindings is not None
    assert declared(observed.queues[f"{unique}.work"].arguments) == {
        "x-message-ttl": 60000, "x-max-length": 1000,
        "x-dead-letter-exchange": f"{unique}.dead", "x-dead-letter-routing-key": f"{unique}.work",
    }
    assert declared(observed.queues[f"{unique}.audit.log"].arguments) == {}
    for binding in topology.bindings:
        assert binding.key in observed.bindings
    # ...and AMQP's: an active declare with the file's arguments is accepted only if they all match.
    check = connection.channel()
    check.queue_declare(f"{unique}.work", durable=True, arguments=topology.queues[f"{unique}.work"].declare_arguments())
    # The exchange-to-exchange binding routes: events -> audit -> audit.log.
    check.basic_publish(f"{unique}.events", "work.x", b"hello", mandatory=True)
    assert _get(check, f"{unique}.work") == b"hello"
    assert _get(check, f"{unique}.audit.log") == b"hello"
    check.close()

    second = apply(connection, topology, management_url=management_url)
    assert not second.changed and second.declared == ()
    assert second.render().startswith("No changes")
    assert plan(connection, topology, management_url=management_url).is_noop


def _get(channel: Any, queue: str) -> bytes | None:
    for _ in range(50):
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return bytes(body)
        time.sleep(0.02)
    return None


@pytest.mark.parametrize("mode", ["management", "probes"])
def test_conflict_is_reported_and_nothing_is_declared(
    connection: pika.BlockingConnection, management_url: str, unique: str, cleanup: Any, mode: str
) -> None:
    register(cleanup, unique)
    mgmt = management_url if mode == "management" else NO_MANAGEMENT
    apply(connection, load(unique), management_url=mgmt)
    changed = load(unique, ttl="2m", extra_queue=True)  # a copy of the file: TTL changed, a queue added

    result = plan(connection, changed, management_url=mgmt)

    [conflict] = result.conflicts
    assert (conflict.kind, conflict.name) == ("queue", f"{unique}.work")
    assert Difference("x-message-ttl", 120000, 60000) in conflict.differences
    assert [e.name for e in result.to_create if e.kind == "queue"] == [f"{unique}.added"]
    if mode == "probes":
        assert "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl'" in conflict.advice
    with pytest.raises(TopologyConflict) as raised:
        apply(connection, changed, management_url=mgmt)
    assert "x-message-ttl: expected 120000 (2m), actual 60000 (1m)" in raised.value.report
    assert "nothing was declared" in raised.value.report
    assert not queue_exists(connection.channel, f"{unique}.added")


def test_probe_mode_applies_and_reapplies(connection: pika.BlockingConnection, unique: str, cleanup: Any) -> None:
    register(cleanup, unique)
    topology = load(unique)

    first = apply(connection, topology, management_url=NO_MANAGEMENT)
    assert len(first.created) == len(topology.exchanges) + len(topology.queues) + len(topology.bindings)
    second = apply(connection, topology, management_url=NO_MANAGEMENT)

    assert not second.changed
    assert {e.kind for e in second.declared} == {"binding"}  # bindings cannot be observed over AMQP
    assert second.render().startswith("No changes")
    assert queue_exists(connection.channel, f"{unique}.dead.letters")


def test_provision_creates_then_is_cheap_and_leaves_no_channels(
    connection: pika.BlockingConnection, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    topology = load(unique)
    provision(connection, topology, management_url=management_url)
    assert queue_exists(connection.channel, f"{unique}.work")

    started = time.perf_counter()
    provision(connection, topology, management_url=management_url)
    assert time.perf_counter() - started < 0.5
    connection.process_data_events(time_limit=0.1)
    assert not connection._impl._channels  # every throwaway channel was closed

    with pytest.raises(TopologyConflict):
        provision(connection, load(unique, ttl="5m"), management_url=management_url)


@pytest.mark.parametrize("mode", ["management", "probes"])
async def test_aio_apply_twice_and_refuse_conflicts(
    settings: Settings, management_url: str, unique: str, cleanup: Any, mode: str
) -> None:
    register(cleanup, unique)
    mgmt = management_url if mode == "management" else NO_MANAGEMENT
    connection = await aconnect(settings, "test topology aio")
    try:
        topology = load(unique)
        first = await aapply(connection, topology, management_url=mgmt)
        assert len(first.created) == len(topology.exchanges) + len(topology.queues) + len(topology.bindings)
        second = await aapply(connection, topology, management_url=mgmt)
        assert not second.changed and second.render().startswith("No changes")
        await aprovision(connection, topology, management_url=mgmt)

        changed = load(unique, ttl="2m", extra_queue=True)
        [conflict] = (await aplan(connection, changed, management_url=mgmt)).conflicts
        assert Difference("x-message-ttl", 120000, 60000) in conflict.differences
        with pytest.raises(TopologyConflict):
            await aapply(connection, changed, management_url=mgmt)
        with pytest.raises(TopologyConflict):
            await aprovision(connection, changed, management_url=mgmt)
        probe = await connection.channel()
        with pytest.raises(Exception, match="NOT_FOUND"):
            await probe.declare_queue(f"{unique}.added", passive=True)
    finally:
        await connection.close()


def test_plan_with_settings_opens_and_closes_its_own_connection(
    settings: Settings, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    result = plan(settings, load(unique), management_url=management_url)
    assert {e.status for e in result.entities} == {"create"}
    assert not result.conflicts


async def test_probes_survive_many_refusals_on_one_connection(
    settings: Settings, connection: pika.BlockingConnection, unique: str
) -> None:
    # Every passive probe of a missing queue costs its channel; hundreds in a row, run again on
    # the same connection, once killed aio connections (a lost Channel.Close-Ok in aiormq).
    topology = load_topology_text("queues:\n" + "".join(f"  {unique}.m{i}: {{}}\n" for i in range(300)))
    for _ in range(2):
        assert len(plan(connection, topology, management_url=NO_MANAGEMENT).to_create) == 300
    aio_connection = await aconnect(settings, "test topology aio probes")
    try:
        for _ in range(3):
            assert len((await aplan(aio_connection, topology, management_url=NO_MANAGEMENT)).to_create) == 300
    finally:
        await aio_connection.close()
