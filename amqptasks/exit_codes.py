"""What a library error means at the command line: the lines to print and the exit code.

Shared by the typer CLI and the worker's own entry point (``python -m amqptasks.worker``), which
runs without the CLI library so that long-running worker processes do not carry it.

Exit codes: 0 ok; 1 invalid topology files or conflicts with the broker; 2 bad usage; 3 broker
unreachable.
"""

from __future__ import annotations

from amqptasks.errors import (
    AmqpTasksError,
    BrokerUnavailable,
    ConfigurationError,
    TopologyConflict,
    TopologyError,
)

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def explain(exc: AmqpTasksError) -> tuple[list[str], int]:
    """The stderr lines and the exit code for ``exc``."""
    if isinstance(exc, TopologyError):
        count = len(exc.issues)
        return [*map(str, exc.issues), f"{count} error{'s' if count != 1 else ''}: fix the files above and run again."], EXIT_INVALID
    if isinstance(exc, TopologyConflict):
        return [exc.report], EXIT_INVALID
    if isinstance(exc, BrokerUnavailable):
        return [f"error: {exc}"], EXIT_UNREACHABLE
    if isinstance(exc, ConfigurationError):
        return [f"error: {exc}"], EXIT_USAGE
    return [f"error: {exc}"], EXIT_INVALID
