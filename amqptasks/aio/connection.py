"""Opening aio-pika connections: the broker's nodes are tried in turn (core/failover.py); failures
become :class:`BrokerUnavailable` naming host:port of every node tried."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq.exceptions

from amqptasks import fastpaths
from amqptasks.aio.tap import DeliveryTap, TapFactory
from amqptasks.core.failover import ConnectFailures, NodeRing
from amqptasks.settings import BrokerAddress, Settings, find_tls_error


def _url_with_name(settings: Settings, name: str, address: BrokerAddress) -> str:
    # aio-pika reads connection options from the query string.
    separator = "&" if "?" in address.url else "?"
    return f"{address.url}{separator}heartbeat={settings.heartbeat}&name={name}"


class PlainConnection(aio_pika.Connection):
    """aio-pika's connection as it is, knowing the node it reached: ``AMQPTASKS_FAST_PATHS=0``
    connections are this (amqptasks/fastpaths.py), tapped ones a :class:`TappedConnection`."""

    @property
    def tap(self) -> DeliveryTap | None:
        """None: no tap; deliveries, acks and replies all go through aiormq's public API."""
        return None
    address: BrokerAddress | None = None  # the node it reached (set by aconnect)

    def describe_node(self) -> str:
        """``host:port`` of the node, with what the server says of itself (product, version,
        cluster name: RabbitMQ does not send the node name)."""
        where = self.address.where if self.address is not None else "?"
        try:
            props: dict[str, Any] = dict(self.transport.connection.server_properties or {})  # type: ignore[union-attr]
        except AttributeError:
            return where
        text = {k: v.decode(errors="replace") if isinstance(v, bytes) else v for k, v in props.items()}
        about = " ".join(str(text[k]) for k in ("product", "version") if text.get(k))
        if text.get("cluster_name"):
            about += f", cluster {text['cluster_name']}"
        return f"{where} ({about})" if about else where



class TappedConnection(PlainConnection):
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


async def aconnect(settings: Settings, name: str, ring: NodeRing | None = None) -> PlainConnection:
    """An aio-pika connection with a :class:`~amqptasks.aio.tap.DeliveryTap` under it (a plain one
    with ``AMQPTASKS_FAST_PATHS=0``, whose ``tap`` is None), to the first node of ``ring``'s order
    that answers (``connection.address``); or BrokerUnavailable naming every node tried."""
    addresses = settings.addresses
    ring = ring or NodeRing(len(addresses))
    failures = ConnectFailures()
    for index in ring.order():
        address = addresses[index]
        try:
            connection = await _connect_one(settings, name, address)
        except _Failed as failed:
            failures.add(address.why_not(failed.cause), failed.message, failed.refused)
            ring.lost(index)
            continue
        ring.connected(index)
        connection.address = address
        return connection
    raise failures.error()


class _Failed(Exception):
    def __init__(self, message: str, cause: BaseException, refused: bool) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.refused = refused  # the node answered and refused us (credentials, TLS)


async def _connect_one(settings: Settings, name: str, address: BrokerAddress) -> PlainConnection:
    fast = fastpaths.enabled()  # read once per connection
    try:
        connection = await asyncio.wait_for(
            # ssl_context: None for amqp://; for amqps:// the configured CA / client certificate.
            aio_pika.connect(
                _url_with_name(settings, name, address),
                timeout=settings.connect_timeout,
                ssl_context=settings.ssl_context(),
                connection_class=TappedConnection if fast else PlainConnection,
            ),
            timeout=settings.connect_timeout + 1,
        )
        assert isinstance(connection, PlainConnection)
        try:
            tap = connection.tap
            if tap is not None and connection.transport is not None:
                # Direct writes only once aiormq's writer is seen to keep the order they rely on.
                await tap.check_writer_order(connection.transport.connection)
        except BaseException:
            await connection.close()  # not left open behind a failed connect
            raise
        return connection
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise _Failed(address.refused_credentials(), exc, True) from None
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        tls = find_tls_error(exc) if address.scheme == "amqps" else None
        if tls is not None:
            raise _Failed(address.tls_failed(tls), exc, True) from None
        raise _Failed(address.unreachable(exc), exc, False) from None
