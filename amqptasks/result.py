"""AsyncResult: the handle a send returns, and how it finds its reply.

Results travel over RPC (direct reply-to): the reply goes to the connection and channel that
published the task, so a result can only be read through that channel, in that process. The
channel keeps every reply for a result that is still referenced, whatever order they arrive in.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from amqptasks.core.envelope import STATUS_FAILURE, STATUS_SUCCESS, Outcome
from amqptasks.errors import AmqpTasksError, TaskError
from amqptasks.remote import ExceptionRebuilder

PENDING = "PENDING"
SUCCESS = STATUS_SUCCESS
FAILURE = STATUS_FAILURE


class ResultUnavailable(AmqpTasksError):
    """No result can arrive for this handle: ignore_result, a lost connection, another process."""


class ResultSource(Protocol):
    """The channel a result's reply arrives on (sync or async adapter)."""

    def poll(self, task_id: str) -> Outcome | None:
        """The outcome if it has arrived; must not block for long."""

    def wait(self, task_id: str, timeout: float | None) -> Outcome:
        """Block until the outcome arrives; raise ResultTimeout or ResultUnavailable."""

    async def await_(self, task_id: str, timeout: float | None) -> Outcome:
        """Await the outcome; raise ResultTimeout or ResultUnavailable."""

    def forget(self, task_id: str) -> None:
        """Nobody will ask for this id any more: drop what is kept for it."""


class AsyncResult:
    """The result of a task that was sent: ``.get()`` (or ``await .aget()``) waits for it.

    Read it from the process that sent the task. Any thread may call ``get()``; a result sent with
    ``asend`` may be read with ``get()`` from another thread than the event loop's.
    """

    __slots__ = ("_errors", "_ignored", "_outcome", "_source", "id", "task_name")

    def __init__(
        self,
        task_id: str,
        task_name: str = "",
        source: ResultSource | None = None,
        *,
        ignored: bool = False,
        errors: ExceptionRebuilder | None = None,
    ) -> None:
        self.id = task_id
        self.task_name = task_name
        self._source = source
        self._outcome: Outcome | None = None
        self._ignored = ignored  # sent without reply_to (ignore_result=True): no reply will come
        self._errors = errors  # the app's: which remote exception types get() raises as themselves

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __del__(self) -> None:
        # The source keeps replies only for results someone still holds; without this a program
        # that calls delay() and never get() would keep every reply forever.
        source = getattr(self, "_source", None)
        if source is not None:
            try:
                source.forget(self.id)
            except Exception:  # never raise from __del__: interpreter shutdown, dead loop
                pass

    def _bind(self, source: ResultSource) -> None:
        """Attach the channel the task was finally published on (batches bind after the flush)."""
        self._source = source

    def _require_source(self) -> ResultSource:
        if self._source is not None:
            return self._source
        if self._ignored:
            raise ResultUnavailable(
                f"task {self.task_name} has ignore_result=True: the worker sends no result, so there is "
                "nothing to get(); remove ignore_result=True from @app.task to wait for results"
            )
        raise ResultUnavailable(f"task {self.task_name} {self.id} is in an app.batch() block that has not been sent yet")

    def _keep(self, outcome: Outcome) -> Outcome:
        self._outcome = outcome
        source, self._source = self._source, None
        if source is not None:
            source.forget(self.id)
        return outcome

    def _peek(self) -> Outcome | None:
        if self._outcome is None and self._source is not None:
            outcome = self._source.poll(self.id)
            if outcome is not None:
                self._keep(outcome)
        return self._outcome

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The task's return value, or (``propagate=False``) the exception it raised.

        A task that raised ``ValueError`` makes this raise an exception that ``except ValueError``
        and ``except TaskError`` both catch (see :mod:`amqptasks.remote`; a type the caller has not
        loaded is a plain :class:`TaskError`); it carries ``exc_type``, ``exc_message`` and the remote
        ``traceback``. Raises :class:`ResultTimeout` after ``timeout`` seconds.
        """
        if self._outcome is None:
            self._keep(self._require_source().wait(self.id, timeout))
        return self._value(propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """``get()`` for asyncio code."""
        if self._outcome is None:
            self._keep(await self._require_source().await_(self.id, timeout))
        return self._value(propagate)

    def _value(self, propagate: bool) -> Any:
        outcome = self._outcome
        assert outcome is not None
        if outcome.successful:
            return outcome.value
        error = self._exception(outcome)
        if propagate:
            raise error
        return error

    def _exception(self, outcome: Outcome) -> TaskError:
        if self._errors is None:
            return TaskError(outcome.exc_type, outcome.exc_message, outcome.traceback, outcome.task_id)
        return self._errors.exception(outcome.exc_type, outcome.exc_message, outcome.traceback, outcome.task_id, self.task_name)

    def ready(self) -> bool:
        """True once the reply arrived (success or failure). Does not block."""
        return self._peek() is not None

    def successful(self) -> bool:
        """True if the reply arrived and the task succeeded."""
        outcome = self._peek()
        return outcome is not None and outcome.successful

    def failed(self) -> bool:
        """True if the reply arrived and the task raised."""
        outcome = self._peek()
        return outcome is not None and not outcome.successful

    @property
    def status(self) -> str:
        """``PENDING`` until the reply arrives, then ``SUCCESS`` or ``FAILURE``."""
        outcome = self._peek()
        return PENDING if outcome is None else outcome.status

    state = status  # Celery spells it both ways

    @property
    def result(self) -> Any:
        """The value once SUCCESS, the exception ``get()`` raises once FAILURE, None while PENDING (like Celery)."""
        outcome = self._peek()
        if outcome is None:
            return None
        if outcome.successful:
            return outcome.value
        return self._exception(outcome)

    @property
    def traceback(self) -> str | None:
        """The remote traceback once FAILURE, else None."""
        outcome = self._peek()
        return outcome.traceback if outcome is not None and not outcome.successful else None


def in_running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
