"""App: the registry of tasks, the settings, the topology, and the producer connections.

All state hangs off the App instance (no module globals), so several apps — or a test's app and a
worker's — never share connections by accident.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from amqptasks.core.options import task_options
from amqptasks.core.routing import Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import (
    ConfigurationError,
    TopologyError,
    TopologyIssue,
    UnknownTask,
)
from amqptasks.remote import ExceptionRebuilder
from amqptasks.result import AsyncResult, ResultSource
from amqptasks.settings import Settings
from amqptasks.task import Signature, Task

if TYPE_CHECKING:
    from amqptasks.aio.publisher import AsyncPublisher
    from amqptasks.sync.publisher import SyncPublisher

TopologyPaths = str | Path | Sequence[str | Path] | None


def _paths(topology: TopologyPaths, base: Path | None) -> tuple[Path, ...]:
    """Topology paths as given; relative ones resolve against the cwd, else the app's module dir."""
    if topology is None:
        return ()
    items = [topology] if isinstance(topology, str | Path) else list(topology)
    found: list[Path] = []
    missing: list[TopologyIssue] = []
    for item in items:
        path = Path(item)
        if not path.is_absolute() and not path.exists() and base is not None and (base / path).exists():
            path = base / path
        if not path.is_file():
            missing.append(TopologyIssue(str(item), None, "", f"file not found (looked in {Path.cwd()}"
                                         + (f" and {base}" if base else "") + ")"))
        found.append(path)
    if missing:
        raise TopologyError(missing)
    return tuple(found)


def default_topology_path() -> Path:
    """The built-in topology (exchange ``tasks``, queue ``celery`` with a dead-letter queue)."""
    return Path(str(resources.files("amqptasks").joinpath("default_topology.yaml")))


class Batch:
    """Sends collected inside ``with app.batch():`` — published together, one confirm wait."""

    def __init__(self) -> None:
        self.items: list[tuple[Outgoing, AsyncResult]] = []
        self.results: list[AsyncResult] = []


class App:
    """A task application: ``App("tasks", broker=..., topology="topology/default.yaml")``.

    ``broker`` defaults to ``AMQPTASKS_BROKER_URL``, then ``amqp://guest:guest@localhost:5672/%2F``.
    ``topology`` is a YAML path or a list of paths; without one the built-in default is used.
    ``rebuild_exceptions`` (default True): ``get()`` on a task that raised ``ValueError`` raises an
    exception ``except ValueError`` catches (and ``except TaskError`` too), for exception types the
    caller has imported; False: always :class:`~amqptasks.errors.TaskError`. ``not_rebuilt``: type
    names (``"KeyError"``, ``"myapp.errors.Secret"``) that stay TaskError. See :mod:`amqptasks.remote`.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | Sequence[str] | None = None,
        topology: TopologyPaths = None,
        settings: Settings | None = None,
        rebuild_exceptions: bool = True,
        not_rebuilt: Iterable[str] = (),
    ) -> None:
        if main is not None and (not isinstance(main, str) or not main):
            raise ConfigurationError(f"App main name must be a non-empty string, got {main!r}")
        self.main: str = main or "__main__"
        if settings is None:
            settings = Settings.from_env(broker_url=broker)
        elif broker is not None:
            settings = settings.with_broker(broker)
        self.settings: Settings = settings
        caller = sys._getframe(1).f_globals.get("__file__")
        self._base = Path(caller).resolve().parent if isinstance(caller, str) else None
        self._topology_paths = _paths(topology, self._base)  # missing files fail here, at import time
        self._topology: Topology | None = None
        self._provisioned: tuple[Topology | None, Topology | None] = (None, None)
        self.tasks: dict[str, Task] = {}
        self._batch: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(f"amqptasks-batch-{id(self)}", default=None)
        self._sync: SyncPublisher | None = None
        self._async: AsyncPublisher | None = None
        self._lock = threading.Lock()  # guards creating the publishers: many threads send at once
        # What get() raises for a failed task (amqptasks/remote.py): the remote type too, if loaded here.
        self.exception_rebuilder = ExceptionRebuilder(rebuild_exceptions, not_rebuilt)

    def __repr__(self) -> str:
        return f"<App {self.main} broker={self.settings.masked_broker}>"

    # --- configuration -------------------------------------------------------------------------

    @property
    def topology_paths(self) -> tuple[Path, ...]:
        """The topology files in use (the built-in default when none were given)."""
        return self._topology_paths or (default_topology_path(),)

    @property
    def topology(self) -> Topology:
        """The merged topology, loaded on first use and cached; TopologyError if the files are invalid."""
        if self._topology is None:
            from amqptasks.core.loader import load_topology

            self._topology = load_topology(list(self.topology_paths))
        return self._topology

    @property
    def provisioned_topology(self) -> Topology:
        """What producers declare: :attr:`topology` plus the delay cascade and its landing queues."""
        topology = self.topology
        cached_for, provisioned = self._provisioned
        if cached_for is not topology:
            from amqptasks.core.provision import with_delays

            settings = self.settings
            provisioned = with_delays(topology, prefix=settings.delay_prefix, queue_type=settings.delay_queue_type)
            self._provisioned = (topology, provisioned)
        assert provisioned is not None
        return provisioned

    def configured(self, *, broker: str | None = None, topology: TopologyPaths = None) -> App:
        """Point this app at another broker and/or topology (the CLI's ``--broker``/``--topology``).

        Changes the app in place (tasks keep pointing at it, so tasks sending tasks use the new
        broker too), closes its producer connections, and returns it.
        """
        self.close()
        if broker:
            self.settings = self.settings.with_broker(broker)
        if topology:
            self._topology_paths = _paths(topology, None)
            self._topology = None
        return self

    # --- tasks ----------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a task: ``@app.task`` or ``@app.task(name=..., queue=..., ignore_result=True, ...)``.

        Options are validated here, so a typo fails at import. The default name is
        ``module.function`` (``app.main`` stands in for ``__main__``).

        A plain ``def`` task runs on one of the worker's threads, where no event loop runs (so
        ``asyncio.run()`` and libraries that refuse to run under a loop, like Django's ORM, work).
        ``inline=True`` lets it run on the worker's event loop instead, once it has proven instant
        (32 calls in a row under 0.1 ms): that saves two thread wake-ups per call (~150-300 µs), for
        tasks like ``add(x, y)``. What it costs the task: it must never block (no I/O, no sleep, no
        locks held by others) and may not call ``asyncio.run()`` or anything that needs no running
        loop; a call of 10 ms, or two of 1 ms close together, send it back to threads for good (logged);
        a call that blocks the loop for 30 s ends the worker process (its supervisor starts another,
        its unacked messages return to the queue). ``amqptasks worker --no-inline`` turns inline off
        for every task.
        """
        if fn is not None and not callable(fn):
            raise ConfigurationError(f"@app.task expects a function, got {fn!r}; use @app.task(name=...) for options")

        def register(func: Callable[..., Any]) -> Task:
            if isinstance(func, Task):
                raise ConfigurationError(f"{func.name} is already a task; apply @app.task once")
            module = getattr(func, "__module__", None) or "__main__"
            if module == "__main__":
                module = self.main
            task = Task(self, func, task_options(f"{module}.{func.__name__}", options))
            existing = self.tasks.get(task.name)
            if existing is not None and _origin(existing.fn) != _origin(func):
                raise ConfigurationError(
                    f"two tasks are named {task.name!r} ({_origin(existing.fn)} and {_origin(func)}); "
                    "give one of them another name=..."
                )
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def get_task(self, name: str) -> Task:
        """The task registered as ``name``, or UnknownTask listing the known ones."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} in app {self.main!r} (known: {known})") from None

    # --- sending --------------------------------------------------------------------------------

    def _sync_publisher(self) -> SyncPublisher:
        publisher = self._sync
        if publisher is None:
            from amqptasks.sync.publisher import SyncPublisher

            with self._lock:
                if self._sync is None:
                    self._sync = SyncPublisher(self.settings, lambda: self.provisioned_topology, self.main)
                publisher = self._sync
        return publisher

    def _async_publisher(self) -> AsyncPublisher:
        publisher = self._async
        if publisher is None:
            from amqptasks.aio.publisher import AsyncPublisher

            with self._lock:
                if self._async is None:
                    self._async = AsyncPublisher(self.settings, lambda: self.provisioned_topology, self.main)
                publisher = self._async
        return publisher

    def _send(self, item: Outgoing) -> AsyncResult:
        batch = self._batch.get()
        result = _unbound(item, self.exception_rebuilder)
        if batch is not None:
            batch.items.append((item, result))
            return result
        sources = self._sync_publisher().publish([item])
        return _bind(result, item, sources[0])

    async def _asend(self, item: Outgoing) -> AsyncResult:
        sources = await self._async_publisher().publish([item])
        return _bind(_unbound(item, self.exception_rebuilder), item, sources[0])

    def send_many(self, signatures: Iterable[Signature]) -> list[AsyncResult]:
        """Send many tasks with one confirm wait (pipelined confirms): ``app.send_many([add.s(1, 2), ...])``.

        On a failure (unroutable, nack, timeout) raises the first error after every message was
        tried; the others were published and confirmed.
        """
        items = [sig.prepare() for sig in signatures]
        return self._send_prepared(items)

    def _send_prepared(self, items: list[Outgoing]) -> list[AsyncResult]:
        if not items:
            return []
        sources = self._sync_publisher().publish(items)
        return [_bind(_unbound(item, self.exception_rebuilder), item, source) for item, source in zip(items, sources, strict=True)]

    async def asend_many(self, signatures: Iterable[Signature]) -> list[AsyncResult]:
        """``send_many`` for asyncio code."""
        items = [sig.prepare() for sig in signatures]
        if not items:
            return []
        sources = await self._async_publisher().publish(items)
        return [_bind(_unbound(item, self.exception_rebuilder), item, source) for item, source in zip(items, sources, strict=True)]

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect the sync sends made inside the block and publish them together at its end.

        ``with app.batch() as batch: add.delay(1, 2)`` — the AsyncResults are returned by the sends
        as usual (and listed in ``batch.results``) but can be read only after the block. If the
        block raises, nothing is sent.
        """
        if self._batch.get() is not None:
            raise ConfigurationError("app.batch() blocks do not nest")
        batch = Batch()
        token = self._batch.set(batch)
        try:
            yield batch
        finally:
            self._batch.reset(token)
        items = [item for item, _ in batch.items]
        if items:
            sources = self._sync_publisher().publish(items)
            for (item, result), source in zip(batch.items, sources, strict=True):
                _bind(result, item, source)
        batch.results = [result for _, result in batch.items]

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this app's producer connections (results not yet read can no longer arrive)."""
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        aio, self._async = self._async, None
        if aio is not None:
            aio.close_nowait()

    async def aclose(self) -> None:
        """Close this app's connections from asyncio code."""
        aio, self._async = self._async, None
        if aio is not None:
            await aio.aclose()
        self.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _unbound(item: Outgoing, errors: ExceptionRebuilder) -> AsyncResult:
    return AsyncResult(item.task_id, item.task_name, None, ignored=not item.wants_result, errors=errors)


def _bind(result: AsyncResult, item: Outgoing, source: ResultSource | None) -> AsyncResult:
    if item.wants_result and source is not None:
        result._bind(source)
    return result
