"""Opening pika connections: one place that maps connect failures to :class:`BrokerUnavailable`."""

from __future__ import annotations

import pika
import pika.exceptions

from amqptasks.errors import BrokerUnavailable
from amqptasks.settings import BrokerAddress, Settings, find_tls_error


def connection_parameters(settings: Settings, name: str) -> pika.URLParameters:
    """pika parameters for ``settings``, labelled ``name`` in the broker's connection list."""
    address = settings.address
    params = pika.URLParameters(settings.broker_url)
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
    tls = find_tls_error(exc) if address.scheme == "amqps" else None
    if tls is not None:
        return address.tls_failed(tls)
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return address.refused_credentials()
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"broker at {address.where} denied user {address.username!r} access to vhost {address.vhost!r}"
    return address.unreachable(exc)


def connect(settings: Settings, name: str) -> pika.BlockingConnection:
    """A blocking connection, or :class:`BrokerUnavailable` within the connect timeout."""
    try:
        return pika.BlockingConnection(connection_parameters(settings, name))
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(describe_failure(settings.address, exc)) from None
