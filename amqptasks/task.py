"""Task: a function registered with ``@app.task``, callable locally and sendable to workers."""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqptasks.core.options import (
    NO_SEND_OPTIONS,
    SendOptions,
    TaskOptions,
    unsupported_send_options,
)
from amqptasks.core.routing import (
    NO_ROUTE,
    Outgoing,
    RouteSpec,
    match_route,
    outgoing,
    resolve,
)
from amqptasks.core.topology import Topology
from amqptasks.errors import ConfigurationError
from amqptasks.result import AsyncResult

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from amqptasks.app import App


@dataclass(frozen=True)
class Signature:
    """A task with its arguments, ready to send (``add.s(3, 4)``); for ``app.send_many``."""

    task: Task
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: SendOptions = NO_SEND_OPTIONS

    def delay(self) -> AsyncResult:
        """Send it now."""
        return self.task._send(self.args, self.kwargs, self.options)

    async def adelay(self) -> AsyncResult:
        """Send it now, from asyncio code."""
        return await self.task._asend(self.args, self.kwargs, self.options)

    def prepare(self) -> Outgoing:
        """The encoded message (checks the arguments against the function)."""
        return self.task.prepare(self.args, self.kwargs, self.options)


def _send_options(
    routing_key: str | None,
    exchange: str | None,
    queue: str | None,
    priority: int | None,
    expires: float | timedelta | datetime | None,
    headers: Mapping[str, Any] | None,
    task_id: str | None,
    countdown: float | None,
    eta: datetime | None,
    unsupported: Mapping[str, Any],
) -> SendOptions:
    if unsupported:
        raise unsupported_send_options(unsupported)
    if (
        routing_key is None and exchange is None and queue is None and priority is None and expires is None
        and not headers and task_id is None and countdown is None and eta is None
    ):
        return NO_SEND_OPTIONS  # the common delay() case skips validation entirely
    return SendOptions(
        queue=queue, exchange=exchange, routing_key=routing_key, priority=priority, expires=expires,
        headers=dict(headers or {}), task_id=task_id, countdown=countdown, eta=eta,
    )


def new_task_id() -> str:
    """A random (version 4) UUID string.

    From ``random.getrandbits`` rather than ``uuid.uuid4()``: ids need uniqueness, not secrecy, and
    uuid4's os.urandom call cost 2-5 us per send; formatted by hand because ``uuid.UUID`` itself
    costs another 0.7 us. The stdlib reseeds that generator in a forked child, so processes forked
    from one parent do not repeat each other's ids.
    """
    h = f"{random.getrandbits(128):032x}"
    # version nibble 4; variant bits 10xx (RFC 4122) in the first digit of the fourth group
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class Task:
    """A registered task. Call it to run it here; ``delay``/``apply_async``/``send`` to run it on a worker.

    Attributes the worker relies on: ``name``, ``fn`` (the original function), ``options``
    (:class:`~amqptasks.core.options.TaskOptions`), ``is_async`` and :meth:`signature_check`.
    """

    def __init__(self, app: App, fn: Any, options: TaskOptions) -> None:
        functools.update_wrapper(self, fn)  # first: the function's own attributes must not shadow ours
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        if options.inline and self.is_async:
            raise ConfigurationError(
                f"task {self.name!r}: inline=True is for plain (def) functions; an async def task always "
                "runs on the worker's event loop; remove inline=True"
            )
        self._signature = inspect.signature(fn)
        if options.bind and not self._signature.parameters:
            raise ConfigurationError(f"task {self.name!r}: bind=True needs a first parameter (self) to receive the task")
        params = list(self._signature.parameters.values())[1 if options.bind else 0 :]
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        self._arity = len(params) if plain else -1  # fast path for the common f(x, y) shape
        self._task_route = RouteSpec(options.queue, options.exchange, options.routing_key)
        self._route_cache: tuple[Topology | None, RouteSpec] = (None, NO_ROUTE)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, like a plain call (no broker involved)."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def signature_check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError when ``args``/``kwargs`` do not fit the function (``self`` skipped if bound)."""
        if not kwargs and len(args) == self._arity:
            return
        if self.options.bind:
            self._signature.bind(None, *args, **kwargs)
        else:
            self._signature.bind(*args, **kwargs)

    def _call_text(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> str:
        """``tasks.add(3, y=4)``: the call as the user wrote it, for error messages (shortened)."""
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
        text = ", ".join(shown)
        return f"{self.name}({text if len(text) <= 120 else text[:117] + '...'})"

    # --- building messages (pure) ------------------------------------------------------------

    def _route(self) -> RouteSpec:
        topology = self.app.topology
        cached_for, spec = self._route_cache
        if cached_for is not topology:  # topology is cached per app; recompute only if it changed
            spec = RouteSpec.of(match_route(self.name, topology.routes))
            self._route_cache = (topology, spec)
        return spec

    def prepare(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                options: SendOptions = NO_SEND_OPTIONS) -> Outgoing:
        """The message a send publishes: checked arguments, routing decided, body encoded."""
        # exact-type checks first: ABC isinstance checks cost a microsecond each on every send
        if type(args) is not tuple and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
            raise TypeError(f"{self.name}: args must be a list or tuple, got {type(args).__name__}")
        if kwargs is not None and type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise TypeError(f"{self.name}: kwargs must be a dict, got {type(kwargs).__name__}")
        try:
            self.signature_check(args, kwargs or {})
        except TypeError as exc:
            raise TypeError(f"{self._call_text(args, kwargs)}: {exc}") from None
        now_ms = time.time_ns() // 1_000_000
        send_route = (
            NO_ROUTE if options is NO_SEND_OPTIONS else RouteSpec(options.queue, options.exchange, options.routing_key)
        )
        destination = resolve(send_route, self._task_route, self._route())
        return outgoing(
            task_id=options.task_id or new_task_id(),
            task_name=self.name,
            args=args,
            kwargs=kwargs,
            destination=destination,
            want_result=not self.options.ignore_result,
            priority=options.priority if options.priority is not None else self.options.priority,
            expires_ms=options.expires_ms(now_ms, self.options.expires),
            eta_ms=options.eta_ms(now_ms),
            headers=options.headers,
            now_ms=now_ms,
            delay_prefix=self.app.settings.delay_prefix,
        )

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This task with arguments, to send later or in a batch: ``app.send_many([add.s(1, 2)])``."""
        return Signature(self, args, kwargs)

    def signature(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        """Like :meth:`s`, with send options (``queue=``, ``priority=`` ...)."""
        opts = _send_options(
            options.pop("routing_key", None), options.pop("exchange", None), options.pop("queue", None),
            options.pop("priority", None), options.pop("expires", None), options.pop("headers", None),
            options.pop("task_id", None), options.pop("countdown", None), options.pop("eta", None), options,
        )
        return Signature(self, tuple(args), dict(kwargs or {}), opts)

    # --- sending ------------------------------------------------------------------------------

    def _send(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None, options: SendOptions) -> AsyncResult:
        return self.app._send(self.prepare(args, kwargs, options))

    async def _asend(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None, options: SendOptions) -> AsyncResult:
        return await self.app._asend(self.prepare(args, kwargs, options))

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send with these arguments; returns at once with an :class:`AsyncResult` (confirmed by the broker)."""
        return self._send(args, kwargs, NO_SEND_OPTIONS)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        routing_key: str | None = None,
        exchange: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | datetime | None = None,
        headers: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        **unsupported: Any,
    ) -> AsyncResult:
        """Send with options; they win over ``@app.task(...)`` options and topology routes.

        Returns once the broker confirmed the message. Raises UnroutableError when no queue is bound
        for the destination, PublishError/PublishTimeout when the broker does not confirm, and
        BrokerUnavailable when it cannot be reached.
        """
        options = _send_options(routing_key, exchange, queue, priority, expires, headers, task_id, countdown, eta, unsupported)
        return self._send(args, kwargs, options)

    send = apply_async  # ``add.send((3, 4), routing_key="celery")``

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``delay`` for asyncio code (aio-pika underneath)."""
        return await self._asend(args, kwargs, NO_SEND_OPTIONS)

    async def aapply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        routing_key: str | None = None,
        exchange: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | datetime | None = None,
        headers: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        **unsupported: Any,
    ) -> AsyncResult:
        """``apply_async`` for asyncio code."""
        options = _send_options(routing_key, exchange, queue, priority, expires, headers, task_id, countdown, eta, unsupported)
        return await self._asend(args, kwargs, options)

    asend = aapply_async
