"""amqptasks: a RabbitMQ-first task queue.

    from amqptasks import App
    app = App("tasks", broker="amqp://guest:guest@localhost:5672/%2F")

    @app.task
    def add(x, y):
        return x + y

    add.delay(3, 4).get(timeout=10)  # 7, once a worker runs: amqptasks worker -A tasks
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqptasks.app import App, Batch
    from amqptasks.core.options import SendOptions, TaskOptions
    from amqptasks.errors import (
        AmqpTasksError,
        BrokerUnavailable,
        ConfigurationError,
        PublishError,
        PublishTimeout,
        ResultTimeout,
        TaskError,
        TopologyConflict,
        TopologyError,
        UnknownTask,
        UnroutableError,
    )
    from amqptasks.result import (
        FAILURE,
        PENDING,
        SUCCESS,
        AsyncResult,
        ResultUnavailable,
    )
    from amqptasks.settings import Settings
    from amqptasks.task import Signature, Task

__all__ = [
    "FAILURE",
    "PENDING",
    "SUCCESS",
    "AmqpTasksError",
    "App",
    "AsyncResult",
    "Batch",
    "BrokerUnavailable",
    "ConfigurationError",
    "PublishError",
    "PublishTimeout",
    "ResultTimeout",
    "ResultUnavailable",
    "SendOptions",
    "Settings",
    "Signature",
    "Task",
    "TaskError",
    "TaskOptions",
    "TopologyConflict",
    "TopologyError",
    "UnknownTask",
    "UnroutableError",
]

# Public names are imported on first use: a process that needs only part of the package (the
# worker's supervisor, `amqptasks topology validate`) does not load the client with its asyncio,
# ssl and pika (about 14 MiB and 0.1 s). Static imports only: nothing here imports by a computed
# name (tests/faults/test_security.py scans for that).
def __getattr__(name: str) -> Any:
    home: ModuleType
    if name in ("App", "Batch"):
        from amqptasks import app as home
    elif name in ("SendOptions", "TaskOptions"):
        from amqptasks.core import options as home
    elif name in ("FAILURE", "PENDING", "SUCCESS", "AsyncResult", "ResultUnavailable"):
        from amqptasks import result as home
    elif name == "Settings":
        from amqptasks import settings as home
    elif name in ("Signature", "Task"):
        from amqptasks import task as home
    elif name in __all__:
        from amqptasks import errors as home
    elif name in ("app", "core", "errors", "result", "settings", "task"):
        # Submodules that `import amqptasks` used to load as a side effect: still reachable so.
        import amqptasks.app
        import amqptasks.core
        import amqptasks.errors
        import amqptasks.result
        import amqptasks.settings
        import amqptasks.task  # noqa: F401

        return globals()[name]
    else:
        raise AttributeError(f"module 'amqptasks' has no attribute {name!r}")
    value = getattr(home, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
