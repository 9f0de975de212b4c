"""The one exception tree of amqptasks: everything we raise derives from :class:`AmqpTasksError`."""

from __future__ import annotations

from dataclasses import dataclass


class AmqpTasksError(Exception):
    """Root of every error amqptasks raises."""


class ConfigurationError(AmqpTasksError):
    """A setting, option or argument is invalid; the message says which and how to fix it."""


# --- topology -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyIssue:
    """One problem found in topology files: where it is, which key, and what is wrong."""

    file: str
    line: int | None
    path: str  # key path, e.g. "queues.celery.message_ttl"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class TopologyError(AmqpTasksError):
    """Topology files are invalid. ``issues`` holds every problem found, not just the first."""

    def __init__(self, issues: list[TopologyIssue]) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        count = len(self.issues)
        super().__init__(f"{count} topology error{'s' if count != 1 else ''}:\n{lines}")


class TopologyConflict(AmqpTasksError):
    """The live broker holds an entity whose settings differ from the files; nothing was declared."""

    def __init__(self, report: str) -> None:
        self.report = report
        super().__init__(report)


# --- broker and publishing ----------------------------------------------------------------


class BrokerUnavailable(AmqpTasksError):
    """The broker could not be reached. The message names host:port, never the password."""


class BrokerRefused(BrokerUnavailable):
    """A broker node answered but refused the connection (credentials, vhost access, TLS): waiting
    for the broker will not help; the settings need fixing."""


class PublishError(AmqpTasksError):
    """The broker did not confirm a publish (nack, channel closed, or no confirm in time)."""


class PublishTimeout(PublishError, TimeoutError):
    """No publisher confirm arrived within the timeout."""


class UnroutableError(PublishError):
    """A mandatory publish matched no queue: the broker returned it."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str = "NO_ROUTE") -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        shown = exchange or "(default exchange)"
        super().__init__(
            f"unroutable: exchange {shown!r} routed routing key {routing_key!r} to no queue "
            f"({reply_text}); declare a queue bound with that key (topology file) or fix the route"
        )


# --- tasks and results ---------------------------------------------------------------------


class UnknownTask(AmqpTasksError):
    """A message named a task this app does not register."""


class TaskError(AmqpTasksError):
    """The task raised on the worker. Carries the remote exception's type, message and traceback.

    ``get()`` raises an instance of a class that derives from both this and the remote type when
    the caller has that type loaded (``except ValueError:`` works; see :mod:`amqptasks.remote`);
    otherwise a plain TaskError."""

    task_name: str = ""  # the task that raised, when known

    def __init__(self, exc_type: str, exc_message: str, traceback: str = "", task_id: str = "") -> None:
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback
        self.task_id = task_id
        super().__init__(f"{exc_type}: {exc_message}")


class ResultTimeout(AmqpTasksError, TimeoutError):
    """No result arrived within the timeout given to ``get``."""


class TaskRetry(AmqpTasksError):
    """Raised by ``self.retry(...)`` in a bound task: run me again later (``raise self.retry(...)``
    reads well and works too). ``exc`` is the error that caused it; ``countdown`` seconds, or None
    for the task's backoff settings."""

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None) -> None:
        self.exc = exc
        self.countdown = countdown
        super().__init__(f"retry requested{f' after {countdown}s' if countdown is not None else ''}: {exc!r}")


class TaskExpired(AmqpTasksError):
    """The task was delivered after its ``expires`` time and was not run."""
