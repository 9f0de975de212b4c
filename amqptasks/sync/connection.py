"""Opening pika connections: one place that tries the broker's nodes in turn (core/failover.py) and
maps connect failures to :class:`BrokerUnavailable`."""

from __future__ import annotations

import pika
import pika.exceptions

from amqptasks.core.failover import ConnectFailures, NodeRing
from amqptasks.settings import BrokerAddress, Settings, find_tls_error


def connection_parameters(settings: Settings, name: str, address: BrokerAddress | None = None) -> pika.URLParameters:
    """pika parameters for ``address`` (default: the first of ``settings``), labelled ``name`` in
    the broker's connection list."""
    address = address or settings.address
    params = pika.URLParameters(address.url)
    params.socket_timeout = settings.connect_timeout
    params.stack_timeout = settings.connect_timeout
    params.blocked_connection_timeout = settings.confirm_timeout
    params.heartbeat = settings.heartbeat
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name, "product": "amqptasks"}
    context = settings.ssl_context()
    if context is not None:
        # pika's own amqps default has no server_hostname, so a verifying context cannot check the
        # certificate's name; ours names the host and carries the configured CA / client cert.
        params.ssl_options = pika.SSLOptions(context, address.host)
    return params


def describe_failure(address: BrokerAddress, exc: BaseException) -> str:
    """Why a connection failed, naming host:port and never the password."""
    return _failure(address, exc)[0]


def _failure(address: BrokerAddress, exc: BaseException) -> tuple[str, bool]:
    """(why a connection failed, whether the node answered and refused us)."""
    tls = find_tls_error(exc) if address.scheme == "amqps" else None
    if tls is not None:
        return address.tls_failed(tls), True
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return address.refused_credentials(), True
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"broker at {address.where} denied user {address.username!r} access to vhost {address.vhost!r}", True
    return address.unreachable(exc), False


def connect_node(settings: Settings, name: str, ring: NodeRing | None = None) -> tuple[pika.BlockingConnection, BrokerAddress]:
    """A blocking connection to the first node of ``ring``'s order that answers, and its address;
    or :class:`BrokerUnavailable` naming every node tried (one connect timeout per node at most)."""
    addresses = settings.addresses
    ring = ring or NodeRing(len(addresses))
    failures = ConnectFailures()
    for index in ring.order():
        address = addresses[index]
        try:
            connection = pika.BlockingConnection(connection_parameters(settings, name, address))
        except (pika.exceptions.AMQPError, OSError) as exc:
            failures.add(address.why_not(exc), *_failure(address, exc))
            ring.lost(index)
            continue
        ring.connected(index)
        return connection, address
    raise failures.error()


def connect(settings: Settings, name: str, ring: NodeRing | None = None) -> pika.BlockingConnection:
    """A blocking connection (to the first node that answers), or :class:`BrokerUnavailable`."""
    return connect_node(settings, name, ring)[0]
