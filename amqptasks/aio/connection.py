"""Opening aio-pika connections: failures become :class:`BrokerUnavailable` naming host:port."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq.exceptions

from amqptasks.aio import wire
from amqptasks.errors import BrokerUnavailable
from amqptasks.settings import Settings, find_tls_error


def _url_with_name(settings: Settings, name: str) -> str:
    # aio-pika reads connection options from the query string.
    separator = "&" if "?" in settings.broker_url else "?"
    return f"{settings.broker_url}{separator}heartbeat={settings.heartbeat}&name={name}"


async def aconnect(settings: Settings, name: str, *, robust: bool = False) -> aio_pika.abc.AbstractConnection:
    """An aio-pika connection (robust: reconnects and replays declarations), or BrokerUnavailable."""
    # Every aio connection, worker or producer, decodes and encodes through the fixed pamqp:
    # a bad frame must not close it, and a header such as {"delta": -1} must encode (aio/wire.py).
    wire.install()
    factory = aio_pika.connect_robust if robust else aio_pika.connect
    address = settings.address
    try:
        return await asyncio.wait_for(
            # ssl_context: None for amqp://; for amqps:// the configured CA / client certificate.
            factory(_url_with_name(settings, name), timeout=settings.connect_timeout, ssl_context=settings.ssl_context()),
            timeout=settings.connect_timeout + 1,
        )
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(address.refused_credentials()) from None
    except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        tls = find_tls_error(exc) if address.scheme == "amqps" else None
        raise BrokerUnavailable(address.tls_failed(tls) if tls is not None else address.unreachable(exc)) from None
