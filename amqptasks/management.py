"""Read what a live broker holds through the RabbitMQ management HTTP API (stdlib only).

The topology planner needs every exchange's, queue's and binding's settings; AMQP can only say
"refused" when they differ, the management API says exactly how. Three GETs cover a vhost however
many entities it has. When the API is unreachable, disabled or refuses the user, :func:`observe`
returns ``None`` and the adapters fall back to declare probes.

The password travels only in the ``Authorization`` header: never in a URL, a log line or an error.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from amqptasks.core.plan_types import ObservedExchange, ObservedQueue, ObservedState
from amqptasks.core.topology import Binding
from amqptasks.errors import ConfigurationError
from amqptasks.settings import Settings

log = logging.getLogger(__name__)

MANAGEMENT_URL_ENV = "AMQPTASKS_MANAGEMENT_URL"
#: Values of AMQPTASKS_MANAGEMENT_URL (or ``management_url``) that mean "do not use the API".
DISABLED = ("off", "none", "false", "0", "disabled")
QUEUE_COLUMNS = "name,durable,auto_delete,exclusive,arguments"


@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the management API of one vhost is, and who asks. ``base_url`` holds no credentials."""

    base_url: str
    vhost: str
    username: str
    password: str = field(repr=False)

    @classmethod
    def for_broker(
        cls,
        *,
        scheme: str,
        host: str,
        port: int | None = None,
        vhost: str,
        username: str,
        password: str,
        management_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagementEndpoint | None:
        """The endpoint for an AMQP broker: ``management_url``, else ``AMQPTASKS_MANAGEMENT_URL``,
        else ``http://host:15672`` (``https://host:15671`` for amqps) with the AMQP credentials when
        the broker listens on the standard AMQP port. A broker on another port (a second node, a
        container's mapped port) keeps its API elsewhere, so there is no default: ``None``, and
        callers fall back to declare probes rather than read another broker's state.

        A URL with its own ``user:pass@`` uses those credentials. ``None`` when disabled ("off").
        """
        env = os.environ if env is None else env
        explicit = management_url if management_url is not None else env.get(MANAGEMENT_URL_ENV) or None
        if explicit is None:
            if port is not None and port != (5671 if scheme == "amqps" else 5672):
                return None
            default = f"https://{host}:15671" if scheme == "amqps" else f"http://{host}:15672"
            return cls(default, vhost, username, password)
        if explicit.strip().lower() in DISABLED:
            return None
        try:
            parts = urlsplit(explicit)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError:
            raise ConfigurationError(
                f"management URL is malformed; expected http://host:15672 (set {MANAGEMENT_URL_ENV} or pass one)"
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"management URL must look like http://host:15672, got scheme {parts.scheme!r}; "
                f"fix {MANAGEMENT_URL_ENV} or the --management-url option, or set it to 'off'"
            )
        if parts.username is not None:
            username, password = unquote(parts.username), unquote(parts.password or "")
        netloc = parts.netloc.rpartition("@")[2]
        base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        return cls(base, vhost, username, password)

    @classmethod
    def from_settings(cls, settings: Settings, management_url: str | None = None) -> ManagementEndpoint | None:
        """The endpoint for the broker ``settings`` points at (see :meth:`for_broker`)."""
        return cls.from_amqp_url(settings.address.url, management_url)  # the first node's

    @classmethod
    def from_amqp_url(cls, broker_url: str, management_url: str | None = None) -> ManagementEndpoint | None:
        """The endpoint for an ``amqp://user:pass@host:port/vhost`` URL (see :meth:`for_broker`)."""
        parts = urlsplit(broker_url)
        path = parts.path.removeprefix("/")
        return cls.for_broker(
            scheme=parts.scheme,
            host=parts.hostname or "localhost",
            port=parts.port,
            vhost=unquote(path) if path else "/",
            username=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            management_url=management_url,
        )


def observe(
    settings: Settings, *, management_url: str | None = None, timeout: float = 5.0
) -> ObservedState | None:
    """Exchanges, queues and bindings of the settings' vhost, or ``None`` when the management API
    is unreachable, disabled (``AMQPTASKS_MANAGEMENT_URL=off``) or refuses the user."""
    endpoint = ManagementEndpoint.from_settings(settings, management_url)
    return observe_endpoint(endpoint, timeout=timeout) if endpoint is not None else None


def observe_endpoint(endpoint: ManagementEndpoint, *, timeout: float = 5.0) -> ObservedState | None:
    """Like :func:`observe`, for an explicit endpoint: three GETs, issued concurrently."""
    vhost = quote(endpoint.vhost, safe="")
    paths = (
        f"/api/exchanges/{vhost}",
        f"/api/queues/{vhost}?disable_stats=true&columns={QUEUE_COLUMNS}",
        f"/api/bindings/{vhost}",
    )
    # Concurrent because each answer takes a broker round trip and they are independent.
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="amqptasks-mgmt") as pool:
        futures = [pool.submit(_get_json, endpoint, path, timeout) for path in paths]
        answers = [future.result() for future in futures]
    failures = [reason for answer, reason in answers if reason]
    if failures:
        log.info("%s; using declare probes instead", failures[0])
        return None
    exchanges, queues, bindings = (answer for answer, _ in answers)
    try:
        return _observed_state(exchanges, queues, bindings)
    except (KeyError, TypeError, AttributeError) as exc:
        log.warning("management API at %s answered in an unexpected shape (%s: %s); using declare probes",
                    endpoint.base_url, type(exc).__name__, exc)
        return None


def _get_json(endpoint: ManagementEndpoint, path: str, timeout: float) -> tuple[Any, str]:
    """One GET decoded as JSON, and ``""``; or ``None`` and why it failed (without credentials)."""
    token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode("ascii")
    request = urllib.request.Request(
        endpoint.base_url + path, headers={"Authorization": f"Basic {token}", "Accept": "application/json"}
    )
    where = f"{endpoint.base_url}{path.split('?', 1)[0]}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # only http(s): checked in for_broker
            return json.loads(response.read()), ""
    except urllib.error.HTTPError as exc:
        hint = " (wrong credentials, or the user lacks the 'management' tag)" if exc.code in (401, 403) else ""
        return None, f"management API {where} answered HTTP {exc.code}{hint}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return None, f"management API {where} unreachable ({getattr(exc, 'reason', exc)})"
    except ValueError as exc:
        return None, f"management API {where} did not answer JSON ({exc})"


def _observed_state(exchanges: Any, queues: Any, bindings: Any) -> ObservedState:
    observed_exchanges = {
        item["name"]: ObservedExchange(
            name=item["name"],
            type=item["type"],
            durable=bool(item["durable"]),
            auto_delete=bool(item["auto_delete"]),
            internal=bool(item["internal"]),
            arguments=dict(item.get("arguments") or {}),
        )
        for item in exchanges
    }
    observed_queues = {
        item["name"]: ObservedQueue(
            name=item["name"],
            durable=bool(item["durable"]),
            auto_delete=bool(item["auto_delete"]),
            # The API reports an exclusive queue's owner, not a flag, in some versions.
            exclusive=bool(item.get("exclusive", False)),
            arguments=dict(item.get("arguments") or {}),
        )
        for item in queues
    }
    # Binding.key is the identity the planner compares; build it the same way from the API's view.
    observed_bindings = frozenset(
        Binding(
            source=item["source"],
            destination=item["destination"],
            destination_type=item["destination_type"],
            routing_key=item["routing_key"],
            arguments=item.get("arguments") or {},
        ).key
        for item in bindings
    )
    return ObservedState(observed_exchanges, observed_queues, observed_bindings)
