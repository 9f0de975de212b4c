"""Raw pika publishing for fault scenarios: messages no amqptasks producer would ever send."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class RawPublisher:
    """One confirmed pika channel that publishes whatever it is given (mandatory, persistent).

    It also consumes direct reply-to, so a message may carry ``reply_to="amq.rabbitmq.reply-to"``
    (the broker rewrites it to this channel's address; without the consumer it would close the
    channel) and the worker's FAILURE replies to poison messages can be counted.
    """

    def __init__(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        self.channel = channel
        self.replies: list[tuple[pika.spec.BasicProperties, bytes]] = []
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        channel.confirm_delivery()

    def _on_reply(self, _channel: Any, _method: Any, properties: pika.spec.BasicProperties, body: bytes) -> None:
        self.replies.append((properties, body))

    def publish(self, queue: str, body: bytes, headers: Mapping[str, Any] | None, **properties: Any) -> None:
        """Publish to ``queue`` via the default exchange; raises if the broker does not confirm it."""
        props = pika.BasicProperties(delivery_mode=2, headers=dict(headers) if headers is not None else None, **properties)
        self.channel.basic_publish("", queue, body, props, mandatory=True)

    def pump(self, seconds: float = 0.0) -> None:
        """Let pika deliver replies that arrived meanwhile."""
        self.channel.connection.process_data_events(time_limit=seconds)


@contextmanager
def raw_publisher(broker_url: str, name: str) -> Iterator[RawPublisher]:
    """A :class:`RawPublisher` on its own connection, labelled ``name``; closed afterwards."""
    params = pika.URLParameters(broker_url)
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    try:
        yield RawPublisher(connection.channel())
    finally:
        if connection.is_open:
            connection.close()
