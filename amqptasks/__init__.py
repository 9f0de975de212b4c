"""amqptasks: a RabbitMQ-first task queue.

    from amqptasks import App
    app = App("tasks", broker="amqp://guest:guest@localhost:5672/%2F")

    @app.task
    def add(x, y):
        return x + y

    add.delay(3, 4).get(timeout=10)  # 7, once a worker runs: amqptasks worker -A tasks
"""

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
from amqptasks.result import FAILURE, PENDING, SUCCESS, AsyncResult, ResultUnavailable
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
