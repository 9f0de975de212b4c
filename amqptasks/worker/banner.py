"""The start-up banner: what this worker is, where it connects, what it consumes and runs."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from amqptasks.core.deadletter import bindings_label, dead_letter_target
from amqptasks.settings import mask_url
from amqptasks.worker.config import WorkerConfig

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.core.topology import Topology


def _version() -> str:
    try:
        return version("amqptasks")
    except PackageNotFoundError:
        return "dev"


def banner(app: App, topology: Topology, config: WorkerConfig) -> str:
    """A Celery-like banner; the broker password is masked."""
    width = max((len(q) for q in config.queues), default=6) + 2
    queue_lines = []
    for queue in config.queues:
        target = dead_letter_target(topology, queue)
        dead = f"{target.exchange or '(default)'}/{target.routing_key}"
        queue_lines.append(f".> {queue:<{width}}{bindings_label(topology, queue)}; dead letters -> {dead}")
    task_lines = [f"  . {name}" for name in sorted(app.tasks)] or ["  (no tasks registered)"]
    return "\n".join(
        [
            "",
            f"amqptasks {_version()} worker on {platform.node()} (Python {platform.python_version()})",
            "",
            "[config]",
            f".> app:         {app.main}",
            f".> broker:      {mask_url(app.settings.broker_url)}",
            f".> concurrency: {config.processes} process(es) x {config.threads} thread(s); async tasks on each event loop"
            + (", and plain ones declared inline=True once proven instant" if config.inline else ""),
            f".> prefetch:    {config.prefetch} per process (per-consumer QoS), late acks",
            f".> grace:       {config.grace:g}s" + (" (burst: exit when drained)" if config.burst else ""),
            "",
            "[queues]",
            *queue_lines,
            "",
            "[tasks]",
            *task_lines,
            "",
        ]
    )
