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
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from amqptasks.errors import AmqpTasksError
from amqptasks.exit_codes import EXIT_INVALID, EXIT_OK, explain

if TYPE_CHECKING:
    from amqptasks.core.topology import Topology
    from amqptasks.settings import Settings

# pretty_exceptions_show_locals=False: a traceback's locals could include a broker URL's password.
cli = typer.Typer(
    name="amqptasks",
    help="A RabbitMQ-first task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, URLs and [sections] not eaten or cut
)
topology_app = typer.Typer(
    help="Validate topology files, diff them against a broker, apply them, export them.",
    no_args_is_help=True,
)
cli.add_typer(topology_app, name="topology")
dlq_app = typer.Typer(help="Inspect, replay and purge dead-letter queues.", no_args_is_help=True)
cli.add_typer(dlq_app, name="dlq")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("amqptasks")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"amqptasks {_version()}")
        raise typer.Exit(EXIT_OK)


APP_HELP = (
    "The module defining the App (default: $AMQPTASKS_APP, then [tool.amqptasks] app in "
    "./pyproject.toml). The current directory is importable."
)


@cli.callback()
def main_options(
    ctx: typer.Context,
    app: Annotated[str | None, typer.Option("-A", "--app", metavar="MODULE[:ATTR]",
                   help="For the worker, given before the command as Celery has it: "
                        "`amqptasks -A tasks worker`. " + APP_HELP)] = None,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                       help="Print the version and exit.")] = False,
) -> None:
    """A RabbitMQ-first task queue."""
    ctx.obj = {"app": app}


# Commands import the library lazily so that `--help` and `validate` start fast.
# Further commands register on `cli` here, e.g. `@cli.command("worker")` and
# `cli.add_typer(dlq_app, name="dlq")`; keep them thin and reuse _exit_codes().


class ExportFormat(enum.StrEnum):
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
                 help="amqp://user:pass@host:5672/vhost; a cluster's nodes as full URLs joined with ';' "
                      "(default: $AMQPTASKS_BROKER_URL, then localhost)."),
]
ManagementUrl = Annotated[
    str | None,
    typer.Option("--management-url", metavar="URL",
                 help="Management API to read the broker's state from (default: $AMQPTASKS_MANAGEMENT_URL, "
                      "then http://<broker host>:15672); 'off' uses declare probes instead."),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also list unchanged (plan) or re-declared (apply) entities.")]
Delays = Annotated[bool, typer.Option("--delays/--no-delays",
                   help="Include the delay cascade that workers and producers provision for countdown, "
                        "eta and retries (each declares a destination's landing queue when it needs it).")]


def _provisioned(files: list[Path], settings: Settings, delays: bool) -> Topology:
    from amqptasks.core.loader import load_topology
    from amqptasks.core.provision import with_delays

    topology = load_topology(files)
    if not delays:
        return topology
    return with_delays(topology, prefix=settings.delay_prefix, queue_type=settings.delay_queue_type)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Turn library errors into a message on stderr and the documented exit code."""
    try:
        yield
    except AmqpTasksError as exc:
        lines, code = explain(exc)
        for line in lines:
            typer.echo(line, err=True)
        raise typer.Exit(code) from None


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
                 verbose: Verbose = False, delays: Delays = True) -> None:
    """Show what `apply` would do; exit 1 if an entity conflicts with the broker."""
    from amqptasks.core.plan import render_plan
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import plan

    with _exit_codes():
        settings = Settings.from_env(broker)
        topology = _provisioned(files, settings, delays)
        result = plan(settings, topology, management_url=management_url)
    typer.echo(render_plan(result, verbose=verbose))
    if result.conflicts:
        raise typer.Exit(EXIT_INVALID)


@topology_app.command("apply")
def apply_command(files: Files, broker: Broker = None, management_url: ManagementUrl = None,
                  verbose: Verbose = False, delays: Delays = True) -> None:
    """Declare what the files have and the broker lacks; refuse (exit 1) on any conflict."""
    from amqptasks.settings import Settings
    from amqptasks.sync.topology import apply

    with _exit_codes():
        settings = Settings.from_env(broker)
        topology = _provisioned(files, settings, delays)
        result = apply(settings, topology, management_url=management_url)
    typer.echo(result.render(verbose=verbose))


@topology_app.command("export")
def export_command(
    files: Files,
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="definitions: JSON for "
                      "`rabbitmqctl import_definitions`; mermaid: a flowchart for docs.")],
    vhost: Annotated[str, typer.Option("--vhost", metavar="VHOST", help="The vhost written into definitions.")] = "/",
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
    ctx: typer.Context,
    app: Annotated[str | None, typer.Option("-A", "--app", metavar="MODULE[:ATTR]", help=APP_HELP)] = None,
    queues: Annotated[str, typer.Option("--queues", "-Q", metavar="QUEUES", help="Comma-separated queues to consume.")] = "celery",
    processes: Annotated[int, typer.Option("--processes", "-c", min=0, metavar="N", show_default="0: one per CPU",
                         help="Consumer processes.")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, metavar="N", help="Threads per process for plain-function tasks.")] = 8,
    prefetch: Annotated[int, typer.Option("--prefetch", min=0, metavar="N", show_default="0: 4 x threads",
                        help="Unacked messages per process.")] = 0,
    broker: Broker = None,
    topology: Annotated[list[Path] | None, typer.Option("--topology", exists=True, readable=True, metavar="FILE",
                        show_default="the App's own", help="Topology files; give the option once per file.")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", metavar="LEVEL",
                        help="debug, info, warning or error (any case, as Celery's -l INFO).")] = "info",
    grace: Annotated[float, typer.Option("--grace", min=0, metavar="SECONDS", help="Seconds running tasks get to finish on SIGTERM.")] = 30.0,
    burst: Annotated[bool, typer.Option("--burst", help="Drain the queues, then exit 0.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                    help="Wait (retrying, a log line per attempt) until the broker answers at start; "
                         "--no-wait (and --burst): exit 3 at once.")] = True,
    inline: Annotated[bool, typer.Option("--inline/--no-inline",
                      help="Let tasks declared @app.task(inline=True) run on the event loop once proven "
                           "instant (32 calls in a row under 0.1 ms). --no-inline: a kill switch that keeps "
                           "those on threads too (other plain tasks always run on threads).")] = True,
) -> None:
    """Consume tasks: prefetch, late acks, replies, dead-letters, graceful shutdown, reconnects."""
    from amqptasks.worker.command import exec_worker

    before = (ctx.obj or {}).get("app")  # `amqptasks -A tasks worker` (Celery's order)
    if before is not None and app is not None and before != app:
        typer.echo(f"-A given twice ({before!r} before worker, {app!r} after); give it once", err=True)
        raise typer.Exit(2)
    app = app if app is not None else before
    # Hands over to a process without typer (exec, same PID): see amqptasks/worker/__main__.py.
    exec_worker(
        app=app, queues=queues, processes=processes, threads=threads, prefetch=prefetch, broker=broker,
        topology=[str(path) for path in topology] if topology else None, loglevel=loglevel, grace=grace,
        burst=burst, inline=inline, wait=wait,
    )


Queue = Annotated[str, typer.Argument(metavar="QUEUE", help="The dead-letter queue, e.g. celery.dead.")]


@dlq_app.command("list")
def dlq_list_command(
    queue: Queue,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N", help="Show at most this many.")] = 20,
    broker: Broker = None,
) -> None:
    """Show dead letters (id, task, exception, when, retries); they stay in the queue."""
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from amqptasks.settings import Settings
    from amqptasks.sync.dlq import list_dead

    with _exit_codes():
        total, found = list_dead(Settings.from_env(broker), queue, limit)
    table = Table(title=f"{queue}: {total} message(s), showing {len(found)}")
    for column in ("id", "task", "exception / reason", "dead-lettered at (UTC)", "retries", "from"):
        table.add_column(column, overflow="fold")
    for info in found:
        when = (
            datetime.fromtimestamp(info.dead_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            if info.dead_at_ms is not None else "-"
        )
        table.add_row(info.task_id, info.task, info.exception or info.reason, when, str(info.retries),
                      info.origin_queue or "-")
    Console(width=160).print(table)


@dlq_app.command("replay")
def dlq_replay_command(
    queue: Queue,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, metavar="N", help="Replay at most this many.")] = None,
    task: Annotated[str | None, typer.Option("--task", metavar="NAME", help="Only messages of this task name.")] = None,
    broker: Broker = None,
) -> None:
    """Send dead letters back to the queue they came from (confirmed, then acked; retries reset)."""
    from rich.progress import Progress

    from amqptasks.settings import Settings
    from amqptasks.sync.dlq import replay

    with _exit_codes(), Progress(transient=True) as progress:
        bar = progress.add_task(f"replaying {queue}", total=None)
        report = replay(Settings.from_env(broker), queue, limit=limit, task=task,
                        progress=lambda done, total: progress.update(bar, completed=done, total=total))
    typer.echo(f"replayed {len(report.replayed)} message(s) from {queue}")
    for info, why in report.left:
        typer.echo(f"left {info.task_id} ({info.task or 'unknown task'}) in {queue}: {why}", err=True)


@dlq_app.command("purge")
def dlq_purge_command(
    queue: Queue,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    broker: Broker = None,
) -> None:
    """Delete every message in a dead-letter queue (asks first unless --yes)."""
    from amqptasks.settings import Settings
    from amqptasks.sync.dlq import purge

    if not yes and not typer.confirm(f"Delete every message in {queue}? This cannot be undone."):
        typer.echo("nothing purged")
        raise typer.Exit(EXIT_OK)
    with _exit_codes():
        count = purge(Settings.from_env(broker), queue)
    typer.echo(f"purged {count} message(s) from {queue}")


def main() -> None:
    """Console-script entry point (``amqptasks``, ``python -m amqptasks``)."""
    cli(prog_name="amqptasks")
