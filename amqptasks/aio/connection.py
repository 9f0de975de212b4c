"""Opening aio-pika connections: failures become :class:`BrokerUnavailable` naming host:port."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq.exceptions

from amqptasks import fastpaths
from amqptasks.aio.tap import DeliveryTap, TapFactory
from amqptasks.errors import BrokerUnavailable
from amqptasks.settings import Settings, find_tls_error


def _url_with_name(settings: Settings, name: str) -> str:
    # aio-pika reads connection options from the query string.
    separator = "&" if "?" in settings.broker_url else "?"
    return f"{settings.broker_url}{separator}heartbeat={settings.heartbeat}&name={name}"


class PlainConnection(aio_pika.Connection):
    """aio-pika's connection as it is, for ``AMQPTASKS_FAST_PATHS=0`` (amqptasks/fastpaths.py)."""

    #: No tap: deliveries, acks and replies all go through aiormq's public API.
    tap: DeliveryTap | None = None


class TappedConnection(aio_pika.Connection):
    """aio-pika's connection with a :class:`~amqptasks.aio.tap.DeliveryTap` under it: the socket is
    read into one buffer (not a new 256 KiB one per read), and a worker takes its deliveries there."""

    def __init__(self, url: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self._tap_factory = TapFactory()
        self.kwargs["transport_factory"] = self._tap_factory  # passed on to aiormq's Connection

    @property
    def tap(self) -> DeliveryTap | None:
        """The connection's tap, bound to its aiormq connection."""
        tap = self._tap_factory.tap
        if tap is None or self.transport is None:
            raise RuntimeError("the connection is not open")
        tap.bind(self.transport.connection)
        return tap


async def aconnect(settings: Settings, name: str) -> TappedConnection | PlainConnection:
    """An aio-pika connection with a :class:`~amqptasks.aio.tap.DeliveryTap` under it (a plain one
    with ``AMQPTASKS_FAST_PATHS=0``, whose ``tap`` is None), or BrokerUnavailable."""
    fast = fastpaths.enabled()  # read once per connection
    address = settings.address
    try:
        connection = await asyncio.wait_for(
            # ssl_context: None for amqp://; for amqps:// the configured CA / client certificate.
            aio_pika.connect(
                _url_with_name(settings, name),
                timeout=settings.connect_timeout,
                ssl_context=settings.ssl_context(),
                connection_class=TappedConnection if fast else PlainConnection,
            ),
            timeout=settings.connect_timeout + 1,
        )
        assert isinstance(connection, TappedConnection | PlainConnection)
        tap = connection.tap
        if tap is not None and connection.transport is not None:
            # Direct writes only once aiormq's writer is seen to keep the order they rely on.
            await tap.check_writer_order(connection.transport.connection)
        return connection
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(address.refused_credentials()) from None
    except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        tls = find_tls_error(exc) if address.scheme == "amqps" else None
        raise BrokerUnavailable(address.tls_failed(tls) if tls is not None else address.unreachable(exc)) from None
