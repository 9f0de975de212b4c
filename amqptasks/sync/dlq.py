"""Dead-letter queue tooling over pika: list (messages stay), replay (confirmed, then acked), purge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from amqptasks.core.deadletter import (
    DeadLetterInfo,
    describe_dead_letter,
    replay_headers,
)
from amqptasks.errors import AmqpTasksError, ConfigurationError
from amqptasks.settings import Settings
from amqptasks.sync.connection import connect


@dataclass
class ReplayReport:
    """What ``replay`` did: replayed ids, and the messages left in the queue with why."""

    replayed: list[DeadLetterInfo] = field(default_factory=list)
    left: list[tuple[DeadLetterInfo, str]] = field(default_factory=list)


class _Got(NamedTuple):
    tag: int
    properties: pika.BasicProperties
    body: bytes


def _get(channel: BlockingChannel, queue: str) -> _Got | None:
    """``basic_get`` without auto-ack, typed: types-pika declares the body ``str`` (pika gives bytes)
    and the delivery tag optional (a Basic.GetOk always carries one)."""
    method, properties, body = channel.basic_get(queue, auto_ack=False)
    if method is None or properties is None:
        return None
    assert method.delivery_tag is not None  # pika decodes every field of a Basic.GetOk
    return _Got(method.delivery_tag, properties, cast(bytes, body))


def _count(message_count: int | None) -> int:
    assert message_count is not None  # pika decodes every field of a DeclareOk / PurgeOk
    return int(message_count)


def _message_count(connection: pika.BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return _count(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise ConfigurationError(f"queue {queue!r} does not exist; check the name (amqptasks topology plan)") from None
        raise
    finally:
        if channel.is_open:
            channel.close()


def list_dead(settings: Settings, queue: str, limit: int) -> tuple[int, list[DeadLetterInfo]]:
    """(messages in the queue, up to ``limit`` of them described). Nothing is removed: the messages
    are read without acks and return to the queue when the channel closes."""
    connection = connect(settings, f"amqptasks dlq list {queue}")
    try:
        total = _message_count(connection, queue)
        channel = connection.channel()
        found: list[DeadLetterInfo] = []
        while len(found) < limit:
            got = _get(channel, queue)
            if got is None:
                break
            found.append(describe_dead_letter(got.properties.headers, got.properties.message_id, queue=queue))
        return total, found
    finally:
        connection.close()


def replay(
    settings: Settings,
    queue: str,
    *,
    limit: int | None = None,
    task: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Republish dead letters to the queue they came from, each confirmed before it is acked, with
    the dead-letter record removed and the retry count reset. Messages for another ``task`` or with
    no known origin stay in the queue."""
    connection = connect(settings, f"amqptasks dlq replay {queue}")
    report = ReplayReport()
    try:
        total = _message_count(connection, queue)
        wanted = total if limit is None else min(limit, total)
        source = connection.channel()
        sink = connection.channel()
        sink.confirm_delivery()
        seen = 0
        while seen < total and len(report.replayed) < wanted:
            got = _get(source, queue)
            if got is None:
                break
            tag, properties, body = got
            seen += 1
            info = describe_dead_letter(properties.headers, properties.message_id, queue=queue)
            if task is not None and info.task != task:
                report.left.append((info, f"task is {info.task!r}, not {task!r}"))
                continue
            if not info.origin_queue:
                report.left.append((info, "no origin queue in its headers"))
                continue
            properties.headers = replay_headers(properties.headers)
            try:
                sink.basic_publish("", info.origin_queue, body, properties, mandatory=True)
            except pika.exceptions.UnroutableError:
                report.left.append((info, f"origin queue {info.origin_queue!r} does not exist"))
                continue
            except pika.exceptions.NackError:
                raise AmqpTasksError(f"the broker refused a replayed message ({info.task_id}); nothing was lost") from None
            source.basic_ack(tag)
            report.replayed.append(info)
            if progress is not None:
                progress(len(report.replayed), wanted)
        return report
    finally:
        connection.close()  # what was not acked (left) goes back to the queue


def purge(settings: Settings, queue: str) -> int:
    """Delete every message in ``queue``; returns how many."""
    connection = connect(settings, f"amqptasks dlq purge {queue}")
    try:
        _message_count(connection, queue)
        return _count(connection.channel().queue_purge(queue).method.message_count)
    finally:
        connection.close()
