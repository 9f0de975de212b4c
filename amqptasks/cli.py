"""The ``amqptasks`` command line. Each command parses its arguments and makes one library call;
what an error means for the exit code is decided once, in :func:`_exit_codes`.

Exit codes: 0 ok; 1 invalid topology files or conflicts with the broker; 2 bad usage (typer's
own code for it, kept); 3 broker unreachable.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

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

# pretty_exceptions_show_locals=False: a traceback's locals could include a broker URL's password.
cli = typer.Typer(
    name="amqptasks",
    help="A RabbitMQ-first task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
topology_app = typer.Typer(
    help="Validate topology files, diff them against a broker, apply them, export them.",
    no_args_is_help=True,
)
cli.add_typer(topology_app, name="topology")
# Commands import the library lazily so that `--help` and `validate` start fast.
# Further commands register on `cli` here, e.g. `@cli.command("worker")` and
# `cli.add_typer(dlq_app, name="dlq")`; keep them thin and reuse _exit_codes().


class ExportFormat(str, enum.Enum):
    """What ``topology export`` writes."""

    definitions = "definitions"
    mermaid = "mermaid"


Files = Annotated[
    list[Path],
    typer.Argument(
        exists=True, readable=True, metavar="FILE",
        help="Topology YAML files; several are merged, a directory stands for its *.yaml files.",
    ),
]
Broker = Annotated[
    str | None,
    typer.Option("--broker", metavar="URL",
                 help="amqp://user:pass@host:5672/vhost (default: $AMQPTASKS_BROKER_URL, then localhost)."),
]
ManagementUrl = Annotated[
    str | None,
    typer.Option("--management-url", metavar="URL",
                 help="Management API to read the broker's state from (default: $AMQPTASKS_MANAGEMENT_URL, "
                      "then http://<broker host>:15672); 'off' uses declare probes instead."),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also list unchanged (plan) or re-declared (apply) entities.")]


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn library errors into a message on stderr and the documented exit code."""
    try:
        yield
    except TopologyError as exc:
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        count = len(exc.issues)
        typer.echo(f"{count} error{'s' if count != 1 else ''}: fix the files above and run again.", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except TopologyConflict as exc:
        typer.echo(exc.report, err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except BrokerUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except AmqpTasksError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None


@topology_app.command("validate")
def validate_command(files: Files) -> None:
    """Check topology files without a broker; print every problem with file:line."""
    from amqptasks.core.loader import load_topology

    with _exit_codes():
        topology = load_topology(files)
    typer.echo(
        f"OK: {len(topology.exchanges)} exchanges, {len(topology.queues)} queues, "
        f"{len(topology.bindings)} bindings, {len(topology.routes)} routes in {len(files)} "
        f"file{'s' if len(files) != 1 else ''}."
    )


@topology_app.command("plan")
def plan_command(files: Files, broker: Broker = None, management_url: ManagementUrl = None,
                 verbose: Verbose = False) -> None:
    """Show what `apply` would do; exit 1 if an entity conflicts with the broker."""
    from amqptasks.core.loader import load_topology
    from amqptasks.core.plan import render_plan
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import plan

    with _exit_codes():
        topology = load_topology(files)
        result = plan(Settings.from_env(broker), topology, management_url=management_url)
    typer.echo(render_plan(result, verbose=verbose))
    if result.conflicts:
        raise typer.Exit(EXIT_INVALID)


@topology_app.command("apply")
def apply_command(files: Files, broker: Broker = None, management_url: ManagementUrl = None,
                  verbose: Verbose = False) -> None:
    """Declare what the files have and the broker lacks; refuse (exit 1) on any conflict."""
    from amqptasks.core.loader import load_topology
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import apply

    with _exit_codes():
        topology = load_topology(files)
        result = apply(Settings.from_env(broker), topology, management_url=management_url)
    typer.echo(result.render(verbose=verbose))


@topology_app.command("export")
def export_command(
    files: Files,
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="definitions: JSON for "
                      "`rabbitmqctl import_definitions`; mermaid: a flowchart for docs.")],
    vhost: Annotated[str, typer.Option("--vhost", help="The vhost written into definitions.")] = "/",
) -> None:
    """Print the topology as RabbitMQ definitions JSON or a Mermaid diagram."""
    from amqptasks.core.export import to_definitions, to_mermaid
    from amqptasks.core.loader import load_topology

    with _exit_codes():
        topology = load_topology(files)
    if format is ExportFormat.definitions:
        typer.echo(json.dumps(to_definitions(topology, vhost), indent=2))
    else:
        typer.echo(to_mermaid(topology))


@cli.command("worker")
def worker_command(
    app: Annotated[str | None, typer.Option("-A", "--app", metavar="MODULE[:ATTR]",
                   help="The module defining the App (default: $AMQPTASKS_APP, then [tool.amqptasks] app "
                        "in ./pyproject.toml). The current directory is importable.")] = None,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")] = "celery",
    processes: Annotated[int, typer.Option("--processes", "-c", help="Consumer processes (default: CPU count).")] = 0,
    threads: Annotated[int, typer.Option("--threads", help="Threads per process for plain-function tasks.")] = 8,
    prefetch: Annotated[int, typer.Option("--prefetch", help="Unacked messages per process (default: 4 x threads).")] = 0,
    broker: Broker = None,
    topology: Annotated[list[Path] | None, typer.Option("--topology", exists=True, readable=True, metavar="FILE",
                        help="Topology files (default: the App's own).")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning or error.")] = "info",
    grace: Annotated[float, typer.Option("--grace", help="Seconds running tasks get to finish on SIGTERM.")] = 30.0,
    burst: Annotated[bool, typer.Option("--burst", help="Drain the queues, then exit 0.")] = False,
) -> None:
    """Consume tasks: prefetch, late acks, replies, dead-letters, graceful shutdown, reconnects."""
    from amqptasks.worker.command import worker_main

    with _exit_codes():
        code = worker_main(
            app=app, queues=queues, processes=processes, threads=threads, prefetch=prefetch, broker=broker,
            topology=[str(path) for path in topology] if topology else None, loglevel=loglevel, grace=grace,
            burst=burst,
        )
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point (``amqptasks``, ``python -m amqptasks``)."""
    cli(prog_name="amqptasks")
