"""``amqptasks worker``: parse nothing, decide nothing — build the config, load the app, run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.locate import app_reference, load_app
from amqptasks.worker.supervisor import run_worker


def worker_main(
    *,
    app: str | None,
    queues: str,
    processes: int,
    threads: int,
    prefetch: int,
    broker: str | None,
    topology: list[str] | None,
    loglevel: str,
    grace: float,
    burst: bool,
    cwd: Path | None = None,
) -> int:
    """Run a worker as the CLI describes it; returns the process exit code."""
    cwd = cwd or Path.cwd()
    config = WorkerConfig(
        queues=WorkerConfig.parse_queues(queues),
        processes=processes,
        threads=threads,
        prefetch=prefetch,
        grace=grace,
        burst=burst,
    )
    the_app = load_app(app_reference(app, cwd), cwd)
    if broker or topology:
        the_app = the_app.configured(broker=broker, topology=topology)
    return run_worker(the_app, config, loglevel=loglevel)


def exec_worker(**options: Any) -> NoReturn:
    """Replace this process with ``python -m amqptasks.worker`` running ``worker_main(**options)``.

    Same PID, signals and working directory; what the CLI had imported is gone (see
    ``amqptasks/worker/__main__.py`` for why).
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None when the process was started without them
            stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "amqptasks.worker", json.dumps(options)])
