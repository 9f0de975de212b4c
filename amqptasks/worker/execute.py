"""Running one task: from a decoded message to an :class:`Outcome`. No broker I/O here."""

from __future__ import annotations

import dataclasses
import time
import traceback as tb
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqptasks.core.envelope import (
    STATUS_SUCCESS,
    Outcome,
    PoisonMessage,
    TaskMessage,
    checked_success,
    failure,
)
from amqptasks.core.jsonvalues import NotJson
from amqptasks.errors import TaskRetry

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.task import Task


@dataclass(frozen=True)
class Request:
    """What a bound task (``@app.task(bind=True)``) sees of its delivery, as ``self.request``."""

    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    retries: int
    redelivered: bool
    queue: str
    headers: Mapping[str, Any] = field(default_factory=dict)


class BoundTask:
    """The ``self`` of a bound task: the task's attributes plus this delivery's ``request``."""

    def __init__(self, task: Task, request: Request) -> None:
        self._task = task
        self.request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def retry(self, exc: BaseException | None = None, countdown: float | None = None) -> TaskRetry:
        """Ask for this task to run again after ``countdown`` seconds (default: the task's backoff).

        Raises :class:`TaskRetry` (so ``raise self.retry(exc=e)`` and a bare ``self.retry()`` both
        work); after ``max_retries`` the message is dead-lettered with ``exc``.
        """
        raise TaskRetry(exc=exc, countdown=countdown)


@dataclass(frozen=True)
class Prepared:
    """A message that passed every check and is ready to run."""

    task: Task
    message: TaskMessage
    call_args: tuple[Any, ...]

    @property
    def wants_reply(self) -> bool:
        """A caller waits for this task's outcome: it has a ``reply_to`` and the task does not ignore results."""
        return bool(self.message.reply_to) and not self.task.options.ignore_result


def prepare(app: App, message: TaskMessage, *, redelivered: bool, queue: str) -> Prepared:
    """Find the task and fit the arguments, or raise :class:`PoisonMessage` saying why not."""
    task = app.tasks.get(message.task)
    if task is None:
        known = ", ".join(sorted(app.tasks)) or "none"
        raise PoisonMessage(
            f"unknown task {message.task!r}: this worker registers {known}; "
            "start a worker whose app defines it, or fix the sender's task name",
            message.id,
            message.task,
            kind="UnknownTask",
        )
    try:
        task.signature_check(message.args, message.kwargs)
    except TypeError as exc:
        raise PoisonMessage(
            f"arguments do not fit {message.task}: {exc}", message.id, message.task, kind="TypeError"
        ) from None
    call_args = message.args
    if task.options.bind:
        request = Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            redelivered=redelivered,
            queue=queue,
            headers=message.extra_headers,
        )
        call_args = (BoundTask(task, request), *message.args)
    return Prepared(task, message, call_args)


def describe_exception(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback text) of ``exc`` for replies and dead-letter headers."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    return name, str(exc), "".join(tb.format_exception(exc))


@dataclass(frozen=True)
class Attempt:
    """What one run produced: the outcome, and the exception behind a failure (for the retry decision)."""

    outcome: Outcome
    error: BaseException | None = None
    seconds: float = 0.0  # how long a plain function ran (where it ran decides where it runs next)
    returned: bool = False  # it returned, but its result was refused (strict JSON): never retried


def _failed(task_id: str, exc: BaseException, seconds: float = 0.0) -> Attempt:
    # A retry request reports the error that caused it, if it names one.
    shown = exc.exc if isinstance(exc, TaskRetry) and exc.exc is not None else exc
    return Attempt(failure(task_id, *describe_exception(shown)), exc, seconds)


def _succeeded(prepared: Prepared, value: Any, seconds: float = 0.0) -> Attempt:
    """A task's return value as its outcome. When a caller waits for it (:attr:`Prepared.wants_reply`), a value it
    would receive changed (NaN, a datetime) fails the task; with nobody to receive it, nothing is
    changed and nothing is checked."""
    message = prepared.message
    if not prepared.wants_reply:
        return Attempt(Outcome(message.id, STATUS_SUCCESS, value=value), None, seconds)
    try:
        return Attempt(checked_success(message.id, message.task, value), None, seconds)
    except NotJson as exc:
        return dataclasses.replace(_failed(message.id, exc, seconds), returned=True)


def run_sync(prepared: Prepared) -> Attempt:
    """Call a plain function task; any exception becomes a FAILURE outcome."""
    started = time.perf_counter()
    try:
        value = prepared.task.fn(*prepared.call_args, **prepared.message.kwargs)
    except BaseException as exc:  # a task's failure is data; even sys.exit() must not end the thread
        return _failed(prepared.message.id, exc, time.perf_counter() - started)
    return _succeeded(prepared, value, time.perf_counter() - started)


async def run_async(prepared: Prepared) -> Attempt:
    """Await an ``async def`` task; any exception becomes a FAILURE outcome."""
    try:
        value = await prepared.task.fn(*prepared.call_args, **prepared.message.kwargs)
    except Exception as exc:
        return _failed(prepared.message.id, exc)
    return _succeeded(prepared, value)
