"""The wire format: task messages and result messages <-> (body bytes, properties, headers).

Pure and orjson-only: nothing is pickled or evaluated. ``docs/protocol.md`` describes the same format
for other languages; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from amqptasks.core.jsonvalues import NotJson, dumps, dumps_body
from amqptasks.errors import TaskError

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/json"
PERSISTENT = 2
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# Task message headers.
H_PROTOCOL = "amqptasks"
H_TASK = "task"
H_ID = "id"
H_RETRIES = "retries"
H_ETA = "eta"  # epoch milliseconds, when the task is due (set when it was delayed)
H_EXPIRES = "expires"  # epoch milliseconds, after which the task must not run
H_DELAY_TO = "delay-to"  # [exchange, routing key] a delayed message is for (read if it cannot get there)

# Headers added when a message is dead-lettered by amqptasks (``x-death`` is the broker's own).
H_DEAD_REASON = "x-amqptasks-reason"
H_EXC_TYPE = "x-exception-type"
H_EXC_MESSAGE = "x-exception-message"
H_TRACEBACK = "x-traceback"
H_ORIGIN_QUEUE = "x-original-queue"
H_ORIGIN_EXCHANGE = "x-original-exchange"
H_ORIGIN_ROUTING_KEY = "x-original-routing-key"
H_DEAD_AT = "x-dead-lettered-at"  # epoch milliseconds

TRACEBACK_LIMIT = 4000  # bytes kept in headers: the broker keeps headers in memory per message
MESSAGE_LIMIT = 1000

STATUS_SUCCESS = "SUCCESS"
STATUS_FAILURE = "FAILURE"


class PoisonMessage(Exception):
    """A delivery that can never be processed; ``reason`` goes into the dead-letter headers.

    Internal to the worker (it dead-letters, it never raises this to users).
    """

    def __init__(
        self, reason: str, task_id: str | None = None, task: str | None = None, kind: str = "PoisonMessage"
    ) -> None:
        self.reason = reason
        self.task_id = task_id
        self.task = task
        self.kind = kind  # the error type the caller's get() reports
        super().__init__(reason)


@dataclass(frozen=True)
class Properties:
    """AMQP basic properties, client-neutral; the adapters map these onto pika / aio-pika."""

    message_id: str
    headers: Mapping[str, Any]
    content_type: str = CONTENT_TYPE
    delivery_mode: int = PERSISTENT
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    timestamp: int | None = None  # epoch seconds

    def client_fields(self) -> dict[str, Any]:
        """Keyword arguments for a client's properties class (pika's and pamqp's share the names);
        headers as a plain dict, which both clients' table encoders require."""
        headers = self.headers
        return {
            "content_type": self.content_type,
            "delivery_mode": self.delivery_mode,
            "headers": headers if type(headers) is dict else dict(headers),
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "priority": self.priority,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class TaskMessage:
    """A decoded task message."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta_ms: int | None = None
    expires_ms: int | None = None
    reply_to: str | None = None
    priority: int | None = None
    extra_headers: Mapping[str, Any] = field(default_factory=dict)


def encode_body(args: Sequence[Any], kwargs: Mapping[str, Any] | None, task: str = "task") -> bytes:
    """``{"args": [...], "kwargs": {...}}`` as strict JSON (core/jsonvalues.py: tuples become
    arrays, nothing else changes). Raises :class:`NotJson` (a TypeError) naming the task, the
    argument's path and the fix: ``add: args[1]['when']: datetime is not JSON; send .isoformat() ...``."""
    return dumps_body(args, kwargs, task)


def encode_task(message: TaskMessage, *, timestamp: int | None = None) -> tuple[bytes, Properties]:
    """Body and properties for publishing ``message``."""
    return encode_new_task(
        message.id, message.task, message.args, message.kwargs, reply_to=message.reply_to,
        priority=message.priority, eta_ms=message.eta_ms, expires_ms=message.expires_ms,
        extra_headers=message.extra_headers, retries=message.retries, timestamp=timestamp,
    )


def encode_new_task(
    task_id: str,
    task: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    *,
    reply_to: str | None,
    priority: int | None,
    eta_ms: int | None,
    expires_ms: int | None,
    extra_headers: Mapping[str, Any],
    retries: int = 0,
    timestamp: int | None = None,
) -> tuple[bytes, Properties]:
    """Body and properties of a task message, built directly: this is every send's hot path.

    ``retries`` is written only when not 0 (the protocol's default): each header costs the
    client a table encoding per message.
    """
    headers: dict[str, Any] = dict(extra_headers) if extra_headers else {}
    headers[H_PROTOCOL] = PROTOCOL_VERSION
    headers[H_TASK] = task
    headers[H_ID] = task_id
    if retries:
        headers[H_RETRIES] = retries
    if eta_ms is not None:
        headers[H_ETA] = eta_ms
    if expires_ms is not None:
        headers[H_EXPIRES] = expires_ms
    properties = Properties(
        message_id=task_id,
        headers=headers,
        correlation_id=task_id if reply_to else None,
        reply_to=reply_to,
        priority=priority,
        timestamp=timestamp,
    )
    return encode_body(args, kwargs, task), properties


def _int_header(headers: Mapping[str, Any], name: str, task_id: str | None) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonMessage(f"header {name!r} must be an integer, got {type(value).__name__}", task_id)
    return value


def decode_task(
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    content_type: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
) -> TaskMessage:
    """Parse a delivery into a :class:`TaskMessage`, or raise :class:`PoisonMessage` saying why."""
    headers = headers or {}
    task_id = headers.get(H_ID)
    task_id = task_id if isinstance(task_id, str) and task_id else None
    task = headers.get(H_TASK)
    if isinstance(task, bytes | bytearray):  # long strings as bytes (pika), byte arrays (aiormq)
        task = task.decode("utf-8", "replace")
    if not isinstance(task, str) or not task:
        raise PoisonMessage(f"missing header {H_TASK!r} (the task name)", task_id)
    if task_id is None:
        raise PoisonMessage(f"missing header {H_ID!r} (the task id)", None, task)
    if content_type not in (None, "", CONTENT_TYPE):
        raise PoisonMessage(f"content type {content_type!r} is not {CONTENT_TYPE}", task_id, task)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"body is not valid JSON ({exc})", task_id, task) from None
    if not isinstance(payload, dict):
        raise PoisonMessage('body must be a JSON object {"args": [...], "kwargs": {...}}', task_id, task)
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PoisonMessage('body "args" must be a list and "kwargs" an object', task_id, task)
    retries = _int_header(headers, H_RETRIES, task_id) or 0
    if retries < 0:
        raise PoisonMessage(f"header {H_RETRIES!r} must be 0 or more, got {retries}", task_id, task)
    known = {H_PROTOCOL, H_TASK, H_ID, H_RETRIES, H_ETA, H_EXPIRES}
    return TaskMessage(
        id=task_id,
        task=task,
        args=tuple(args),
        kwargs=kwargs,
        retries=retries,
        eta_ms=_int_header(headers, H_ETA, task_id),
        expires_ms=_int_header(headers, H_EXPIRES, task_id),
        reply_to=reply_to or None,
        priority=priority,
        extra_headers={k: v for k, v in headers.items() if k not in known},
    )


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a task produced: a value, or an error's type, message and traceback."""

    task_id: str
    status: str
    value: Any = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    reply_body: bytes | None = field(default=None, compare=False, repr=False)  # the SUCCESS reply, checked and encoded

    @property
    def successful(self) -> bool:
        return self.status == STATUS_SUCCESS

    def unwrap(self) -> Any:
        """The value, or raise :class:`TaskError` carrying the remote exception."""
        if self.successful:
            return self.value
        raise TaskError(self.exc_type, self.exc_message, self.traceback, self.task_id)


def success(task_id: str, value: Any) -> Outcome:
    return Outcome(task_id, STATUS_SUCCESS, value=value)


def checked_success(task_id: str, task: str, value: Any) -> Outcome:
    """A task's return value as an outcome, encoded now under the strict JSON rule; raises
    :class:`NotJson` (``add: result['at']: datetime is not JSON; ...``) for a value the caller
    would receive changed. The worker treats that like the task raising it: a failure."""
    body = dumps(value, task, "result", wrap=lambda v: {"id": task_id, "status": STATUS_SUCCESS, "result": v})
    return Outcome(task_id, STATUS_SUCCESS, value=value, reply_body=body)


def failure(task_id: str, exc_type: str, exc_message: str, traceback: str = "") -> Outcome:
    return Outcome(task_id, STATUS_FAILURE, exc_type=exc_type, exc_message=exc_message, traceback=traceback)


def encode_result(outcome: Outcome) -> tuple[bytes, Properties]:
    """Body and properties of the reply sent to the caller's ``reply_to``."""
    _, body, properties = encode_reply(outcome)
    return body, properties


def encode_reply(outcome: Outcome) -> tuple[Outcome, bytes, Properties]:
    """The outcome as the caller will see it, and its reply's body and properties: a result JSON
    cannot carry turns into the failure the caller gets (so the worker can log that, not success)."""
    if outcome.successful:
        body = outcome.reply_body
        if body is None:
            try:
                body = dumps(outcome.value, "task", "result",
                             wrap=lambda v: {"id": outcome.task_id, "status": STATUS_SUCCESS, "result": v})
            except NotJson as exc:
                # The task returned something JSON cannot carry: the caller gets an error, not silence.
                return encode_reply(failure(outcome.task_id, "TypeError", str(exc)))
    else:
        body = orjson.dumps(
            {
                "id": outcome.task_id,
                "status": STATUS_FAILURE,
                "exc_type": outcome.exc_type,
                "exc_message": outcome.exc_message,
                "traceback": outcome.traceback,
            }
        )
    properties = Properties(
        message_id=outcome.task_id,
        headers={H_PROTOCOL: PROTOCOL_VERSION},
        correlation_id=outcome.task_id,
        delivery_mode=1,  # replies go to a transient reply queue; persisting them buys nothing
    )
    return outcome, body, properties


def decode_result(body: bytes, correlation_id: str | None = None) -> Outcome:
    """Parse a reply; a reply we cannot read becomes a FAILURE outcome rather than vanishing."""
    task_id = correlation_id or ""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return failure(task_id, "ProtocolError", f"result body is not valid JSON ({exc})")
    if not isinstance(payload, dict):
        return failure(task_id, "ProtocolError", "result body is not a JSON object")
    task_id = str(payload.get("id") or task_id)
    if payload.get("status") == STATUS_SUCCESS:
        return Outcome(task_id, STATUS_SUCCESS, value=payload.get("result"))
    return failure(
        task_id,
        str(payload.get("exc_type") or "Error"),
        str(payload.get("exc_message") or ""),
        str(payload.get("traceback") or ""),
    )


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, keeping the end (where a traceback's cause is)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return "…" + data[-(limit - 3) :].decode("utf-8", "ignore")


def dead_letter_headers(
    original: Mapping[str, Any] | None,
    *,
    reason: str,
    queue: str,
    exchange: str,
    routing_key: str,
    now_ms: int,
    exc_type: str = "",
    exc_message: str = "",
    traceback: str = "",
) -> dict[str, Any]:
    """The headers a dead-lettered message carries: the original ones plus why and where from."""
    headers = dict(original or {})
    headers[H_DEAD_REASON] = truncate(reason, MESSAGE_LIMIT)
    headers[H_ORIGIN_QUEUE] = queue
    headers[H_ORIGIN_EXCHANGE] = exchange
    headers[H_ORIGIN_ROUTING_KEY] = routing_key
    headers[H_DEAD_AT] = now_ms
    if exc_type:
        headers[H_EXC_TYPE] = exc_type
        headers[H_EXC_MESSAGE] = truncate(exc_message, MESSAGE_LIMIT)
        headers[H_TRACEBACK] = truncate(traceback, TRACEBACK_LIMIT)
    return headers


# The broker's dead-letter bookkeeping, which a message collects on every delay level it waits in.
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason")


def retry_headers(
    original: Mapping[str, Any] | None, *, retries: int, due_ms: int, delayed_to_queue: str | None = None
) -> dict[str, Any]:
    """The headers of a retry's republished copy: the count raised, the due time set, and the
    broker's dead-letter history (from earlier delays) dropped so it does not grow per retry.
    ``delayed_to_queue``: the queue a retry going through the delay cascade is for (its
    ``delay-to``); without it any ``delay-to`` of the original send is dropped."""
    headers = {k: v for k, v in (original or {}).items() if k not in BROKER_DEATH_HEADERS}
    headers[H_RETRIES] = retries
    headers[H_ETA] = due_ms
    if delayed_to_queue is not None:
        headers[H_DELAY_TO] = ["", delayed_to_queue]
    else:
        headers.pop(H_DELAY_TO, None)
    return headers
