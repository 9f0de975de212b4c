"""Task options and send options: validated once, frozen, explained when wrong.

Pure: no broker I/O. ``@app.task(...)`` options are checked at decoration time so that a typo or a
bad value fails when the module is imported, not when the first message is sent (or worse, run).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from amqptasks.core import envelope
from amqptasks.core.frames import header_value_problem
from amqptasks.core.schedule import due_ms, expires_ms_for
from amqptasks.errors import ConfigurationError

MAX_SHORTSTR = 255  # AMQP short strings (names, routing keys) are at most 255 bytes
RESERVED_HEADERS = frozenset(
    {envelope.H_PROTOCOL, envelope.H_TASK, envelope.H_ID, envelope.H_RETRIES, envelope.H_ETA, envelope.H_EXPIRES}
)

# Celery options users will paste, with the reason they are not options here.
NOT_SUPPORTED: Mapping[str, str] = MappingProxyType(
    {
        "acks_late": "amqptasks always acknowledges after the task finished (late ack); remove the option",
        "serializer": "amqptasks messages are always JSON (see docs/protocol.md); remove the option",
        "rate_limit": "rate limits are not supported yet; remove the option",
        "time_limit": "time limits are not supported yet; remove the option",
        "soft_time_limit": "time limits are not supported yet; remove the option",
        "track_started": "there is no STARTED state: results are PENDING, SUCCESS or FAILURE",
        "typing": "arguments are always checked against the function's signature when sending",
        "base": "custom Task base classes are not supported; use bind=True to reach the task",
        "reject_on_worker_lost": "a message of a worker that died is always redelivered",
        "compression": "messages are not compressed",
    }
)


def _unknown(kind: str, name: str, valid: list[str]) -> ConfigurationError:
    if name in NOT_SUPPORTED:
        return ConfigurationError(f"{kind} option {name!r} is not supported: {NOT_SUPPORTED[name]}")
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigurationError(f"unknown {kind} option {name!r}{hint} (valid: {', '.join(sorted(valid))})")


def _check_name(owner: str, what: str, value: object, *, allow_empty: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}: {what} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ConfigurationError(f"{owner}: {what} must not be empty")
    if len(value.encode("utf-8")) > MAX_SHORTSTR:
        raise ConfigurationError(f"{owner}: {what} is longer than {MAX_SHORTSTR} bytes (an AMQP limit)")


def _check_bool(owner: str, what: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{owner}: {what} must be True or False, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_priority(owner: str, value: object) -> None:
    """Priorities are integers 0..255 (queues honour them only when declared with ``max_priority``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ConfigurationError(f"{owner}: priority must be an integer from 0 to 255, got {value!r}")


def check_route(owner: str, queue: str | None, exchange: str | None, routing_key: str | None) -> None:
    """``queue`` means "default exchange, routing key = queue": it cannot be combined with the others."""
    _check_name(owner, "queue", queue)
    _check_name(owner, "exchange", exchange, allow_empty=True)
    _check_name(owner, "routing_key", routing_key, allow_empty=True)
    if queue is not None and (exchange is not None or routing_key is not None):
        raise ConfigurationError(
            f"{owner}: give either queue={queue!r} (published through the default exchange with routing key = "
            "queue name) or exchange= and routing_key=, not both"
        )


@dataclass(frozen=True)
class TaskOptions:
    """What ``@app.task(...)`` said about a task. Defaults follow Celery where Celery has one."""

    name: str
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    ignore_result: bool = False
    priority: int | None = None
    bind: bool = False
    max_retries: int | None = 3  # None: retry without limit (Celery's meaning)
    default_retry_delay: float = 180.0  # seconds, when retry() is given no countdown
    retry_backoff: bool | float = False  # True: exponential from 1 s; a number: from that many seconds
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    expires: float | None = None  # seconds after sending when the task must no longer run
    # A plain function that may run on the worker's event loop once proven instant (worker/inline.py).
    # Off by default: a ``def`` task then never sees a running loop (asyncio.run, Django ORM work).
    inline: bool = False

    def __post_init__(self) -> None:
        owner = f"task {self.name!r}" if isinstance(self.name, str) and self.name else "task"
        _check_name(owner, "name", self.name)
        if not self.name.strip() or self.name != self.name.strip():
            raise ConfigurationError(f"{owner}: name must not be blank or start/end with whitespace")
        check_route(owner, self.queue, self.exchange, self.routing_key)
        for flag in ("ignore_result", "bind", "retry_jitter", "inline"):
            _check_bool(owner, flag, getattr(self, flag))
        check_priority(owner, self.priority)
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0
        ):
            raise ConfigurationError(f"{owner}: max_retries must be an integer >= 0 or None, got {self.max_retries!r}")
        if not _is_number(self.default_retry_delay) or self.default_retry_delay < 0:
            raise ConfigurationError(f"{owner}: default_retry_delay must be seconds >= 0, got {self.default_retry_delay!r}")
        backoff = self.retry_backoff
        if not isinstance(backoff, bool) and (not _is_number(backoff) or backoff <= 0):
            raise ConfigurationError(f"{owner}: retry_backoff must be True/False or seconds > 0, got {backoff!r}")
        if not _is_number(self.retry_backoff_max) or self.retry_backoff_max <= 0:
            raise ConfigurationError(f"{owner}: retry_backoff_max must be seconds > 0, got {self.retry_backoff_max!r}")
        self._check_autoretry(owner)
        if self.expires is not None and (not _is_number(self.expires) or self.expires <= 0):
            raise ConfigurationError(f"{owner}: expires must be seconds > 0 or None, got {self.expires!r}")

    def _check_autoretry(self, owner: str) -> None:
        value: Any = self.autoretry_for
        if isinstance(value, type):
            value = (value,)  # a single class is a common slip; accept it
        if not isinstance(value, tuple | list):
            raise ConfigurationError(f"{owner}: autoretry_for must be a tuple of exception classes, got {value!r}")
        for item in value:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise ConfigurationError(f"{owner}: autoretry_for must hold exception classes, got {item!r}")
        object.__setattr__(self, "autoretry_for", tuple(value))

    @property
    def backoff_base(self) -> float | None:
        """Seconds of the first exponential backoff step, or None when backoff is off."""
        if self.retry_backoff is False:
            return None
        return 1.0 if self.retry_backoff is True else float(self.retry_backoff)


TASK_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TaskOptions))


def task_options(default_name: str, options: Mapping[str, Any]) -> TaskOptions:
    """Validate the keyword arguments of ``@app.task(...)``; unknown names get a suggestion."""
    for key in options:
        if key not in TASK_OPTION_NAMES:
            raise _unknown("task", key, list(TASK_OPTION_NAMES))
    values = dict(options)
    values.setdefault("name", default_name)
    return TaskOptions(**values)


@dataclass(frozen=True)
class SendOptions:
    """Per-send options of ``apply_async``/``send``: they win over the task's options."""

    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    expires: float | timedelta | datetime | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    countdown: float | None = None
    eta: datetime | None = None

    def __post_init__(self) -> None:
        owner = "send"
        check_route(owner, self.queue, self.exchange, self.routing_key)
        check_priority(owner, self.priority)
        if self.expires is not None and not isinstance(self.expires, timedelta | datetime):
            if not _is_number(self.expires) or self.expires <= 0:
                raise ConfigurationError(f"send: expires must be seconds > 0, a timedelta or a datetime, got {self.expires!r}")
        if not isinstance(self.headers, Mapping):
            raise ConfigurationError(f"send: headers must be a mapping, got {type(self.headers).__name__}")
        for key in self.headers:
            if not isinstance(key, str):
                raise ConfigurationError(f"send: header names must be strings, got {key!r}")
            if key in RESERVED_HEADERS:
                raise ConfigurationError(f"send: header {key!r} is reserved by the protocol (see docs/protocol.md)")
            if len(key.encode(errors="replace")) > MAX_SHORTSTR:
                raise ConfigurationError(f"send: header name {key[:40]!r}... is longer than AMQP's {MAX_SHORTSTR} bytes")
            problem = header_value_problem(self.headers[key])
            if problem is not None:
                raise ConfigurationError(
                    f"send: header {key!r} cannot be sent ({problem}); header values must be str, int, float, "
                    "bool, None, bytes, datetime, Decimal, or lists and str-keyed dicts of those"
                )
        if self.task_id is not None and (not isinstance(self.task_id, str) or not self.task_id):
            raise ConfigurationError(f"send: task_id must be a non-empty string, got {self.task_id!r}")
        if self.task_id is not None and len(self.task_id.encode(errors="replace")) > MAX_SHORTSTR:
            raise ConfigurationError(f"send: task_id is longer than AMQP's {MAX_SHORTSTR} bytes (it is the message_id)")
        if self.countdown is not None or self.eta is not None:
            # Rejects negative, naive, both given, or beyond the cascade's range — before any I/O.
            due_ms(now_ms=time.time_ns() // 1_000_000, countdown=self.countdown, eta=self.eta)

    def expires_ms(self, now_ms: int, default_seconds: float | None) -> int | None:
        """Epoch milliseconds after which the task must not run, or None."""
        value = self.expires if self.expires is not None else default_seconds
        if value is None:
            return None
        if isinstance(value, timedelta):
            value = value.total_seconds()
        return expires_ms_for(now_ms=now_ms, expires=value)

    def eta_ms(self, now_ms: int) -> int | None:
        """When the task is due (epoch ms), or None for "now";
        :func:`amqptasks.core.routing.plan_delivery` turns a future one into a delay route."""
        if self.countdown is None and self.eta is None:
            return None
        return due_ms(now_ms=now_ms, countdown=self.countdown, eta=self.eta)


SEND_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SendOptions))
NO_SEND_OPTIONS = SendOptions()


def unsupported_send_options(extra: Mapping[str, Any]) -> ConfigurationError:
    """The error for keyword arguments ``apply_async`` does not know (``link=``, ``retry=`` ...)."""
    names = ", ".join(sorted(extra))
    first = next(iter(sorted(extra)))
    close = difflib.get_close_matches(first, SEND_OPTION_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigurationError(
        f"unsupported send option(s) {names}{hint} (supported: {', '.join(SEND_OPTION_NAMES)})"
    )
