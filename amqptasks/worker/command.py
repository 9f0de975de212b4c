"""``amqptasks worker``: parse nothing, decide nothing — build the config, load the app, run."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.locate import app_reference, load_app

if TYPE_CHECKING:
    from amqptasks.app import App


def load_worker(options: Mapping[str, Any]) -> tuple[App, WorkerConfig]:
    """The app and the worker config that the CLI's ``options`` describe (relative to the cwd)."""
    cwd = Path.cwd()
    config = WorkerConfig(
        queues=WorkerConfig.parse_queues(options["queues"]),
        processes=options["processes"],
        threads=options["threads"],
        prefetch=options["prefetch"],
        grace=options["grace"],
        burst=options["burst"],
        inline=options.get("inline", True),
    )
    app = load_app(app_reference(options["app"], cwd), cwd)
    if options["broker"] or options["topology"]:
        app = app.configured(broker=options["broker"], topology=options["topology"])
    return app, config


def worker_main(options: dict[str, Any]) -> NoReturn:
    """Run a worker as the CLI describes it (the process ends as its supervisor)."""
    from amqptasks.worker.boot import run_worker

    app, config = load_worker(options)
    run_worker(app, config, options)


def consumer_main(options: Mapping[str, Any], index: int) -> int:
    """A replacement consumer process ``index``, forked by the supervisor: load the app, consume."""
    from amqptasks.worker.boot import log_level, prepare_topology, run_consumer
    from amqptasks.worker.supervisor import configure_logging

    configure_logging(log_level(options["loglevel"]), f"Worker-{index}")
    app, config = load_worker(options)
    return run_consumer(app, prepare_topology(app, config), config, f"Worker-{index}")


def exec_worker(**options: Any) -> NoReturn:
    """Replace this process with ``python -m amqptasks.worker`` running ``worker_main(options)``.

    Same PID, signals and working directory; what the CLI had imported is gone (see
    ``amqptasks/worker/__main__.py`` for why).
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None when the process was started without them
            stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "amqptasks.worker", json.dumps(options)])
