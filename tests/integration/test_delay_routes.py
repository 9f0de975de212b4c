"""A delayed send reaches a queue or raises, like an undelayed one; a delayed message whose
destination disappears while it waits is dead-lettered with the reason, never parked.

Each test runs on a delay cascade of its own (classic queues, like test_delays.py's
``own_cascade``) so nothing it leaves waiting can outlive it on the shared broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from amqptasks import App
from amqptasks.cli import cli
from amqptasks.core.delays import delay_infrastructure, landing_queue, unroutable_queue
from amqptasks.errors import PublishError, UnroutableError
from tests.integration.workerproc import queue_counts, wait_for

TOPOLOGY = """
exchanges:
  {p}.direct: {{type: direct}}
queues:
  {p}.here:
    bindings: [{{exchange: {p}.direct, routing_key: k}}]
"""


@pytest.fixture
def prefix(broker_url: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's own delay cascade, deleted afterwards with everything in it."""
    prefix = f"{unique}.delay"
    monkeypatch.setenv("AMQPTASKS_DELAY_PREFIX", prefix)
    monkeypatch.setenv("AMQPTASKS_DELAY_QUEUE_TYPE", "classic")
    yield prefix
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        cascade = delay_infrastructure(prefix=prefix, queue_type="classic")
        for name in cascade.queues:
            channel.queue_delete(name)
        channel.queue_delete(landing_queue(f"{unique}.direct", "k", prefix=prefix))
        for name in cascade.exchanges:
            channel.exchange_delete(name)
    finally:
        connection.close()


@pytest.fixture
def app(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, prefix: str) -> Iterator[App]:
    cleanup.queue(f"{unique}.here")
    cleanup.queue(f"{unique}.gone")
    cleanup.exchange(f"{unique}.direct")
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY.format(p=unique))
    app = App(unique, broker=broker_url, topology=str(path))
    yield app
    app.close()


def waiting(broker_url: str, prefix: str) -> int:
    """Messages anywhere in the cascade's level queues (not the unroutable queue)."""
    cascade = delay_infrastructure(prefix=prefix, queue_type="classic")
    return sum(queue_counts(broker_url, q)[0] for q in cascade.queues if q != unroutable_queue(prefix))


def reasons(broker_url: str, queue: str) -> list[tuple[str, str | None]]:
    """(reason, origin queue) of each message in ``queue``, as ``amqptasks dlq list`` reads them."""
    from amqptasks.settings import Settings
    from amqptasks.sync.dlq import list_dead

    _total, found = list_dead(Settings.from_env(broker_url), queue, 10)
    return [(info.reason, info.origin_queue) for info in found]


# --- at send time ------------------------------------------------------------------------------


def test_a_delayed_send_to_a_missing_queue_raises_unroutable_like_an_undelayed_one(
    app: App, unique: str, broker_url: str, prefix: str
) -> None:
    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    missing = f"{unique}.lopri"
    with pytest.raises(UnroutableError) as undelayed:
        add.apply_async((3, 4), queue=missing)
    with pytest.raises(UnroutableError) as delayed:
        add.apply_async((3, 4), countdown=10, queue=missing)
    assert (delayed.value.exchange, delayed.value.routing_key) == ("", missing) == (
        undelayed.value.exchange, undelayed.value.routing_key)
    assert missing in str(delayed.value)
    # in a batch too, and the producer is still usable afterwards
    with pytest.raises(UnroutableError):
        app.send_many([add.signature((1, 2), queue=f"{unique}.here", countdown=10),
                       add.signature((1, 2), queue=missing, countdown=10)])
    add.apply_async((5, 6), countdown=0.2, queue=f"{unique}.here")
    assert wait_for(lambda: queue_counts(broker_url, f"{unique}.here")[0] == 1, 10)
    assert waiting(broker_url, prefix) == 0  # nothing for the missing queue entered the cascade
    assert queue_counts(broker_url, unroutable_queue(prefix))[0] == 0


def test_a_delayed_async_send_to_a_missing_queue_raises_unroutable(
    app: App, unique: str, broker_url: str, prefix: str
) -> None:
    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    missing = f"{unique}.lopri"

    async def main() -> None:
        try:
            with pytest.raises(UnroutableError) as delayed:
                await add.aapply_async((3, 4), countdown=10, queue=missing)
            assert delayed.value.routing_key == missing
            with pytest.raises(UnroutableError):
                await app.asend_many([add.signature((1, 2), queue=missing, countdown=10)])
            await add.aapply_async((5, 6), countdown=0.2, queue=f"{unique}.here")
        finally:
            await app.aclose()

    asyncio.run(main())
    assert wait_for(lambda: queue_counts(broker_url, f"{unique}.here")[0] == 1, 10)
    assert waiting(broker_url, prefix) == 0


def test_both_producers_refuse_a_queue_they_may_not_use_alike(app: App, unique: str, broker_url: str) -> None:
    """A refusal other than 404 (here 405: another connection's exclusive queue) is a
    PublishError naming the broker's reply, from the sync and the async producer alike."""

    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    owner = pika.BlockingConnection(pika.URLParameters(broker_url))
    locked = f"{unique}.locked"
    try:
        owner.channel().queue_declare(locked, exclusive=True)
        with pytest.raises(PublishError) as sync_error:
            add.apply_async((1, 2), countdown=5, queue=locked)

        async def send() -> PublishError:
            try:
                with pytest.raises(PublishError) as caught:
                    await add.aapply_async((1, 2), countdown=5, queue=locked)
                return caught.value
            finally:
                await app.aclose()

        async_error = asyncio.run(send())
    finally:
        owner.close()
    for error in (sync_error.value, async_error):
        assert not isinstance(error, UnroutableError)
        assert "405" in str(error) and locked in str(error)
    assert str(sync_error.value) == str(async_error)


# --- while waiting -----------------------------------------------------------------------------


def test_a_message_whose_queue_is_deleted_while_it_waits_is_dead_lettered_with_the_reason(
    app: App, unique: str, broker_url: str, prefix: str, channel: Any
) -> None:
    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    gone = f"{unique}.gone"
    channel.queue_declare(gone, durable=True)
    add.apply_async((3, 4), countdown=1.5, queue=gone)
    channel.queue_delete(gone)  # while the message waits in the cascade
    unroutable = unroutable_queue(prefix)
    assert wait_for(lambda: queue_counts(broker_url, unroutable)[0] == 1, 15)
    assert waiting(broker_url, prefix) == 0  # not parked in a level queue
    reason = (f"destination queue {gone!r} did not exist when the delay ended (the broker found no route from the "
              "delay cascade); `amqptasks dlq replay` sends a queue's messages back once it exists")
    assert reasons(broker_url, unroutable) == [(reason, gone)]
    listed = CliRunner().invoke(cli, ["dlq", "list", unroutable, "--broker", broker_url], env={"COLUMNS": "600"})
    assert listed.exit_code == 0 and "destination queue" in listed.stdout, listed.output
    # once the queue exists again, a replay delivers it there
    channel.queue_declare(gone, durable=True)
    replayed = CliRunner().invoke(cli, ["dlq", "replay", unroutable, "--broker", broker_url])
    assert replayed.exit_code == 0, replayed.output
    assert wait_for(lambda: queue_counts(broker_url, gone)[0] == 1, 5)
    assert queue_counts(broker_url, unroutable)[0] == 0


def test_a_message_whose_landing_queue_is_deleted_while_it_waits_is_dead_lettered(
    app: App, unique: str, broker_url: str, prefix: str, channel: Any
) -> None:
    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    add.apply_async((3, 4), countdown=1.5, exchange=f"{unique}.direct", routing_key="k")
    channel.queue_delete(landing_queue(f"{unique}.direct", "k", prefix=prefix))
    unroutable = unroutable_queue(prefix)
    assert wait_for(lambda: queue_counts(broker_url, unroutable)[0] == 1, 15)
    assert waiting(broker_url, prefix) == 0
    [(reason, origin)] = reasons(broker_url, unroutable)
    assert reason.startswith(f"destination exchange '{unique}.direct' with routing key 'k' did not exist when the delay ended")
    assert origin != ""  # the broker's x-death names the level queue; replay leaves it (no queue to go to)


def test_the_default_quorum_cascade_dead_letters_at_least_once_to_the_unroutable_queue(
    tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any
) -> None:
    """The default cascade (quorum, at-least-once dead-lettering: the broker's dead-letter worker,
    not the classic path above) honours the alternate exchange too. Shared by every test: only
    this test's own message is taken out of the unroutable queue."""
    gone = cleanup.queue(f"{unique}.gone")
    path = tmp_path / "topology.yaml"
    path.write_text(f"queues:\n  {gone}: {{}}\n")
    app = App(unique, broker=broker_url, topology=str(path))

    @app.task(ignore_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        sent = add.apply_async((3, 4), countdown=0.5, queue=gone)
    finally:
        app.close()
    channel.queue_delete(gone)
    unroutable = unroutable_queue()

    def take_mine() -> bool:
        for _ in range(queue_counts(broker_url, unroutable)[0]):
            method, properties, _body = channel.basic_get(unroutable)
            if method is None:
                break
            if properties.message_id == sent.id:
                channel.basic_ack(method.delivery_tag)
                return True
            channel.basic_nack(method.delivery_tag, requeue=True)
        return False

    assert wait_for(take_mine, 15)
