"""One settings object for producers, workers and the CLI, read from arguments and ``AMQPTASKS_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from amqptasks.core.delays import DELAY_EXCHANGE_PREFIX, LEVEL_QUEUE_TYPE, QUEUE_TYPES
from amqptasks.errors import ConfigurationError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"


@dataclass(frozen=True)
class BrokerAddress:
    """The parts of a broker URL that matter for connecting and for saying where we connected."""

    url: str
    scheme: str
    host: str
    port: int
    vhost: str
    username: str

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``amqp://user:pass@host:port/vhost`` (or ``amqps://``); raise on anything else."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"broker URL is malformed ({exc}); expected amqp://user:pass@host:5672/vhost") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"broker URL scheme {parts.scheme!r} is not supported; use amqp:// or amqps://"
            )
        if not parts.hostname:
            raise ConfigurationError("broker URL has no host; expected amqp://user:pass@host:5672/vhost")
        default_port = 5671 if parts.scheme == "amqps" else 5672
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        vhost = unquote(path) if path else "/"
        return cls(
            url=url,
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or default_port,
            vhost=vhost,
            username=unquote(parts.username or "guest"),
        )

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    def unreachable(self, cause: BaseException) -> str:
        """Why no connection could be made, naming host:port and never the password."""
        return (
            f"cannot reach the broker at {self.where} ({type(cause).__name__}); is RabbitMQ running? "
            "Start it (./scripts/rabbitmq.sh) or set AMQPTASKS_BROKER_URL"
        )

    def refused_credentials(self) -> str:
        return f"broker at {self.where} refused the credentials of user {self.username!r}"

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ``***``: safe to print and log."""
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """Replace the password of ``url`` with ``***``; leave anything unparsable fully masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigurationError(f"{name}={raw!r} must be greater than 0")
    return value


@dataclass(frozen=True)
class Settings:
    """Connection and timing settings. Build with :meth:`from_env` to honour ``AMQPTASKS_*``."""

    broker_url: str = DEFAULT_BROKER_URL
    connect_timeout: float = 5.0
    confirm_timeout: float = 10.0
    heartbeat: int = 30
    reconnect_attempts: int = 3
    reconnect_delay: float = 0.5
    delay_prefix: str = DELAY_EXCHANGE_PREFIX  # names of the delay cascade's exchanges and queues
    delay_queue_type: str = LEVEL_QUEUE_TYPE  # quorum (at-least-once dead-lettering, 3.10+) or classic

    def __post_init__(self) -> None:
        BrokerAddress.parse(self.broker_url)  # reject a bad URL when the settings are made
        for name in ("connect_timeout", "confirm_timeout", "reconnect_delay"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        if not self.delay_prefix or self.delay_prefix.startswith("amq."):
            raise ConfigurationError(f"delay_prefix {self.delay_prefix!r} must be non-empty and not start with 'amq.'")
        if self.delay_queue_type not in QUEUE_TYPES:
            raise ConfigurationError(f"delay_queue_type must be one of {', '.join(QUEUE_TYPES)}, got {self.delay_queue_type!r}")
        if self.reconnect_attempts < 0:
            raise ConfigurationError("reconnect_attempts must be 0 or more")

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker_url)

    @classmethod
    def from_env(cls, broker_url: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from explicit arguments, then ``AMQPTASKS_*`` variables, then defaults."""
        env = os.environ if env is None else env
        return cls(
            broker_url=broker_url or env.get("AMQPTASKS_BROKER_URL") or DEFAULT_BROKER_URL,
            connect_timeout=_env_float(env, "AMQPTASKS_CONNECT_TIMEOUT", cls.connect_timeout),
            confirm_timeout=_env_float(env, "AMQPTASKS_CONFIRM_TIMEOUT", cls.confirm_timeout),
            delay_prefix=env.get("AMQPTASKS_DELAY_PREFIX") or DELAY_EXCHANGE_PREFIX,
            delay_queue_type=env.get("AMQPTASKS_DELAY_QUEUE_TYPE") or LEVEL_QUEUE_TYPE,
        )

    def with_broker(self, broker_url: str) -> Settings:
        return replace(self, broker_url=broker_url)
