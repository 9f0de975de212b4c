"""One settings object for producers, workers and the CLI, read from arguments and ``AMQPTASKS_*``."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote, urlsplit

from amqptasks.core.delays import DELAY_EXCHANGE_PREFIX, LEVEL_QUEUE_TYPE, QUEUE_TYPES
from amqptasks.errors import ConfigurationError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
#: Several broker addresses (the nodes of one cluster) in one setting: Celery's separator.
URL_SEPARATOR = ";"
_LIST_HINT = (
    "give several broker addresses as full URLs separated by ';' "
    "(amqp://user:pass@node1:5672/vhost;amqp://user:pass@node2:5672/vhost), or App(broker=[url, url])"
)


@dataclass(frozen=True)
class BrokerAddress:
    """The parts of a broker URL that matter for connecting and for saying where we connected."""

    url: str
    scheme: str
    host: str
    port: int
    vhost: str
    username: str

    def __repr__(self) -> str:
        return _masked_repr(self)

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
        rest = url.split("://", 1)[1]
        if "://" in rest:
            # "amqp://a:1@h1/%2F,amqp://b:2@h2/%2F" parses as one host with a vhost of "%2F,amqp://..."
            raise ConfigurationError(
                f"broker URL {mask_url(url)!r} holds more than one URL (joined with {_joiner(rest)!r}?); {_LIST_HINT}"
            )
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
            f"cannot reach the broker at {self.where} ({_reason(cause)}); is RabbitMQ running? "
            "Start it (./scripts/rabbitmq.sh) or set AMQPTASKS_BROKER_URL"
        )

    def why_not(self, cause: BaseException) -> str:
        """The short reason for one node of several: ``host:port (ConnectionRefusedError)``."""
        return f"{self.where} ({_reason(cause)})"

    def tls_failed(self, error: ssl.SSLError) -> str:
        """A failed TLS handshake: what went wrong, and the setting that fixes it."""
        reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"TLS: the certificate of the broker at {self.where} was not accepted ({reason}); set "
                "AMQPTASKS_TLS_CA_FILE (tls_ca_file) to the CA that signed it, and connect with a host "
                "name the certificate names"
            )
        return (
            f"TLS handshake with the broker at {self.where} failed ({reason}); is that port a TLS listener, "
            "and if the broker asks for a client certificate, do AMQPTASKS_TLS_CERT_FILE / AMQPTASKS_TLS_KEY_FILE hold one it accepts?"
        )

    def refused_credentials(self) -> str:
        return f"broker at {self.where} refused the credentials of user {self.username!r}"

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ``***``: safe to print and log."""
        return mask_url(self.url)


def _reason(cause: BaseException) -> str:
    """The socket error behind a failed connect when there is one (pika and aiormq wrap it: in
    their args, an ``exception`` attribute, the cause chain, or as an errno), else the error's type."""
    seen: set[int] = set()
    stack: list[object] = [cause]
    while stack:
        current = stack.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if current is not cause and isinstance(current, OSError):
            return type(current).__name__
        stack.extend([*current.args, getattr(current, "exception", None), current.__cause__, current.__context__])
    if len(cause.args) >= 2 and isinstance(cause.args[0], int):
        return type(OSError(cause.args[0], "")).__name__  # aiormq: errno 111 -> ConnectionRefusedError
    return type(cause).__name__


_SSL_TEXT = re.compile(r"\[SSL: ([A-Z0-9_]+)\] ([^(\]'\"]+)")


def find_tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connect, if that is what it was (pika and aiormq wrap it)."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    texts: list[str] = []
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            texts.append(current)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        stack.extend([*current.args, current.__cause__, current.__context__])
    for text in texts:
        # pika keeps an alert the broker sent after the handshake (it refused our client
        # certificate) only as text: "... SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] ...')".
        if found := _SSL_TEXT.search(text):
            kind = ssl.SSLCertVerificationError if found.group(1) == "CERTIFICATE_VERIFY_FAILED" else ssl.SSLError
            return kind(1, found.group(2).strip())
    for text in texts:
        # With TLS 1.3 the broker may refuse our certificate by closing the socket before its alert
        # is read: pika then reports only an EOF inside the (TLS) stream.
        if "SSLEOFError" in text or "EOF occurred in violation of protocol" in text:
            return ssl.SSLEOFError(8, "the broker closed the connection during or just after the TLS handshake")
    return None


def _masked_repr(obj: DataclassInstance) -> str:
    # Reprs reach logs, tracebacks (pytest, rich and Sentry print locals) and debuggers: URL fields
    # show with the password masked.
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        parts.append(f"{f.name}={mask_url(value)!r}" if f.name in _URL_FIELDS and isinstance(value, str) else f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


_URL_FIELDS = frozenset({"url", "broker_url"})


# Where a URL starts inside a setting or a text: a ';', ',' or space, then ``scheme://``.
_URL_START = re.compile(r"(?<=[;,\s])(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def mask_url(url: str) -> str:
    """Replace every password in ``url`` (one URL, several joined with ';', or a text holding some)
    with ``***``; a piece that does not parse is fully masked. The host is what follows the *last*
    '@' of the authority, so a password holding '@', ',' or a space is masked whole."""
    return "".join(_mask_one(piece) for piece in _URL_START.split(url))


def _mask_one(piece: str) -> str:
    try:
        netloc = urlsplit(piece).netloc
    except ValueError:
        return "***"
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return piece  # no password in it
    return piece.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{hostport}", 1)


def _split_setting(value: str) -> list[str]:
    """';'-joined URLs; a ';' not followed by ``scheme://`` belongs to the URL before it (RFC 3986
    allows it in a password or a path)."""
    items: list[str] = []
    for piece in value.split(URL_SEPARATOR):
        if items and piece.strip() and not _SCHEME.match(piece.strip()):
            items[-1] += URL_SEPARATOR + piece
        else:
            items.append(piece)
    return items


def _joiner(rest: str) -> str:
    """The character just before a second ``scheme://`` (what joined two URLs)."""
    head = rest.split("://", 1)[0]
    stripped = re.sub(r"[a-zA-Z0-9+.-]*$", "", head)
    return stripped[-1:] or "?"


def split_broker_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The broker URLs of a setting: one URL, several joined with ';', or a list of URLs.

    Every item is checked (:meth:`BrokerAddress.parse`); a bad one is a ConfigurationError naming
    its position and the (masked) item.
    """
    if isinstance(value, str):
        items = [item.strip() for item in _split_setting(value)]
        if len(items) > 1 and items[-1] == "":
            items.pop()  # a trailing ';' is harmless
    else:
        items = list(value)
        if not items:
            raise ConfigurationError(f"the broker list is empty; {_LIST_HINT}")
        for position, item in enumerate(items, 1):
            if not isinstance(item, str):
                raise ConfigurationError(f"broker address #{position} is {type(item).__name__}, not a URL string; {_LIST_HINT}")
            if URL_SEPARATOR in item:
                raise ConfigurationError(
                    f"broker address #{position} {mask_url(item)!r} holds a ';': give one URL per list item"
                )
        items = [item.strip() for item in items]
    count = len(items)
    schemes: set[str] = set()
    for position, item in enumerate(items, 1):
        where = f"broker address #{position} of {count}" if count > 1 else "broker URL"
        if not item:
            raise ConfigurationError(f"{where} is empty (two ';' in a row, or an empty list item?); {_LIST_HINT}")
        try:
            schemes.add(BrokerAddress.parse(item).scheme)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where} {mask_url(item)!r}: {exc}") from None
    if len(schemes) > 1:
        raise ConfigurationError(
            "the broker list mixes amqp:// and amqps:// addresses; the nodes of one cluster take one scheme "
            "(and one set of TLS files): use amqps:// for all or none"
        )
    return tuple(items)


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


def _env_path(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw if raw else None


#: Settings field -> environment variable, for the TLS files (read-only).
TLS_ENV: Mapping[str, str] = MappingProxyType({
    "tls_ca_file": "AMQPTASKS_TLS_CA_FILE",
    "tls_cert_file": "AMQPTASKS_TLS_CERT_FILE",
    "tls_key_file": "AMQPTASKS_TLS_KEY_FILE",
})


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
    # TLS (amqps:// only): the CA bundle that signed the broker's certificate (else the system's),
    # and a client certificate + key for brokers that ask for one (both or neither).
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __repr__(self) -> str:
        return _masked_repr(self)

    def __post_init__(self) -> None:
        # The field is a str once made, but Settings(broker_url=[...]) is accepted: keep one spelling.
        given = cast("str | Sequence[str]", self.broker_url)
        if not isinstance(given, str):
            object.__setattr__(self, "broker_url", URL_SEPARATOR.join(split_broker_urls(given)))
        split_broker_urls(self.broker_url)  # reject a bad URL (or list) when the settings are made
        for name in ("connect_timeout", "confirm_timeout", "reconnect_delay"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be greater than 0, got {getattr(self, name)!r}")
        if not self.delay_prefix or self.delay_prefix.startswith("amq."):
            raise ConfigurationError(f"delay_prefix {self.delay_prefix!r} must be non-empty and not start with 'amq.'")
        if self.delay_queue_type not in QUEUE_TYPES:
            raise ConfigurationError(f"delay_queue_type must be one of {', '.join(QUEUE_TYPES)}, got {self.delay_queue_type!r}")
        if self.reconnect_attempts < 0:
            raise ConfigurationError("reconnect_attempts must be 0 or more")
        self._check_tls()

    def _check_tls(self) -> None:
        given = [name for name in TLS_ENV if getattr(self, name)]
        if not given:
            return
        names = ", ".join(f"{name} ({TLS_ENV[name]})" for name in given)
        if self.address.scheme != "amqps":
            # Silently connecting in plain text while TLS files are configured would be worse.
            raise ConfigurationError(f"{names} set but the broker URL is not amqps://; use amqps://host:5671/vhost")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigurationError(
                "a client certificate needs both tls_cert_file (AMQPTASKS_TLS_CERT_FILE) and "
                "tls_key_file (AMQPTASKS_TLS_KEY_FILE)"
            )
        for name in given:
            path = getattr(self, name)
            if not os.path.isfile(path):
                raise ConfigurationError(f"{name} ({TLS_ENV[name]}) {path!r}: no such file")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an ``amqps://`` broker (``None`` for ``amqp://``): certificates and
        host names are always verified, against ``tls_ca_file`` or else the system's CAs."""
        if self.address.scheme != "amqps":
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(f"tls_ca_file (AMQPTASKS_TLS_CA_FILE) {self.tls_ca_file!r} is not a PEM CA bundle: {exc}") from None
        if self.tls_cert_file and self.tls_key_file:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigurationError(
                    f"cannot load the client certificate {self.tls_cert_file!r} with key {self.tls_key_file!r} "
                    f"(AMQPTASKS_TLS_CERT_FILE / AMQPTASKS_TLS_KEY_FILE): {exc}"
                ) from None
        return context

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        """Every broker address, in the order given (the nodes of a cluster; usually one)."""
        return tuple(BrokerAddress.parse(url) for url in split_broker_urls(self.broker_url))

    @property
    def address(self) -> BrokerAddress:
        """The first broker address (the only one, unless several were given)."""
        return self.addresses[0]

    @property
    def masked_broker(self) -> str:
        """Every broker address with its password masked: safe to print and log."""
        return mask_url(self.broker_url)

    @property
    def where(self) -> str:
        """``host:port`` of every address, for messages (``a:5672, b:5672``)."""
        return ", ".join(address.where for address in self.addresses)

    @classmethod
    def from_env(cls, broker_url: str | Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from explicit arguments, then ``AMQPTASKS_*`` variables, then defaults.

        ``broker_url`` (and ``AMQPTASKS_BROKER_URL``) may name several nodes: URLs joined with ';',
        or (here) a list of URLs.
        """
        env = os.environ if env is None else env
        if broker_url is not None and not isinstance(broker_url, str):
            broker_url = URL_SEPARATOR.join(split_broker_urls(broker_url))
        return cls(
            broker_url=broker_url or env.get("AMQPTASKS_BROKER_URL") or DEFAULT_BROKER_URL,
            connect_timeout=_env_float(env, "AMQPTASKS_CONNECT_TIMEOUT", cls.connect_timeout),
            confirm_timeout=_env_float(env, "AMQPTASKS_CONFIRM_TIMEOUT", cls.confirm_timeout),
            delay_prefix=env.get("AMQPTASKS_DELAY_PREFIX") or DELAY_EXCHANGE_PREFIX,
            delay_queue_type=env.get("AMQPTASKS_DELAY_QUEUE_TYPE") or LEVEL_QUEUE_TYPE,
            tls_ca_file=_env_path(env, TLS_ENV["tls_ca_file"]),
            tls_cert_file=_env_path(env, TLS_ENV["tls_cert_file"]),
            tls_key_file=_env_path(env, TLS_ENV["tls_key_file"]),
        )

    def with_broker(self, broker_url: str | Sequence[str]) -> Settings:
        """These settings with another broker (one URL, ';'-joined URLs or a list)."""
        if not isinstance(broker_url, str):
            broker_url = URL_SEPARATOR.join(split_broker_urls(broker_url))
        return replace(self, broker_url=broker_url)
