"""Opening aio-pika connections: failures become :class:`BrokerUnavailable` naming host:port."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq.exceptions

from amqptasks.aio import wire
from amqptasks.aio.tap import DeliveryTap, TapFactory
from amqptasks.errors import BrokerUnavailable
from amqptasks.settings import Settings, find_tls_error


def _url_with_name(settings: Settings, name: str) -> str:
    # aio-pika reads connection options from the query string.
    separator = "&" if "?" in settings.broker_url else "?"
    return f"{settings.broker_url}{separator}heartbeat={settings.heartbeat}&name={name}"


class TappedConnection(aio_pika.Connection):
    """aio-pika's connection with a :class:`~amqptasks.aio.tap.DeliveryTap` under it: the socket is
    read into one buffer (not a new 256 KiB one per read), and a worker takes its deliveries there."""

    def __init__(self, url: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self._tap_factory = TapFactory()
        self.kwargs["transport_factory"] = self._tap_factory  # passed on to aiormq's Connection

    @property
    def tap(self) -> DeliveryTap:
        """The connection's tap, bound to its aiormq connection."""
        tap = self._tap_factory.tap
        if tap is None or self.transport is None:
            raise RuntimeError("the connection is not open")
        tap.bind(self.transport.connection)
        return tap


async def aconnect(settings: Settings, name: str) -> TappedConnection:
    """An aio-pika connection with a :class:`~amqptasks.aio.tap.DeliveryTap` under it, or BrokerUnavailable."""
    # Every aio connection, worker or producer, decodes and encodes through the fixed pamqp:
    # a bad frame must not close it, and a header such as {"delta": -1} must encode (aio/wire.py).
    wire.install()
    address = settings.address
    try:
        connection = await asyncio.wait_for(
            # ssl_context: None for amqp://; for amqps:// the configured CA / client certificate.
            aio_pika.connect(
                _url_with_name(settings, name),
                timeout=settings.connect_timeout,
                ssl_context=settings.ssl_context(),
                connection_class=TappedConnection,
            ),
            timeout=settings.connect_timeout + 1,
        )
        assert isinstance(connection, TappedConnection)
        return connection
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(address.refused_credentials()) from None
    except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        tls = find_tls_error(exc) if address.scheme == "amqps" else None
        raise BrokerUnavailable(address.tls_failed(tls) if tls is not None else address.unreachable(exc)) from None
