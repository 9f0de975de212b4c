"""The worker's main process: provision, print the banner, run and supervise consumer processes.

Signals: the first SIGTERM/SIGINT asks every process to stop gracefully (running tasks finish
within ``--grace`` and are acked); a second one kills them at once (unacked messages return to the
queue). A process that dies unexpectedly is restarted.

Consumer processes ignore SIGTERM and SIGINT and take orders only from the supervisor (SIGUSR1:
stop gracefully; SIGKILL: now). A signal sent to the whole process group — Ctrl-C in a terminal,
systemd's default ``KillMode=control-group`` — would otherwise reach each of them twice (directly
and forwarded) and read as "exit at once".
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from amqptasks.core.deadletter import with_implicit_queues
from amqptasks.core.provision import with_delays
from amqptasks.worker.banner import banner
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.consumer import Consumer

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.core.topology import Topology

log = logging.getLogger("amqptasks.worker")

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
PR_SET_PDEATHSIG = 1
STOP_SIGNAL = signal.SIGUSR1  # supervisor -> consumer process: stop gracefully


def configure_logging(level: str) -> None:
    """Celery-style log lines on stderr, at ``level``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        from amqptasks.errors import ConfigurationError

        raise ConfigurationError(f"--loglevel {level!r} is not one of debug, info, warning, error")
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("aiormq").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("aio_pika").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("pika").setLevel(max(numeric, logging.WARNING))


def prepare_topology(app: App, config: WorkerConfig) -> Topology:
    """The app's topology, a durable dead-lettered declaration for any queue only the CLI names, and
    the delay cascade with landing queues (retries travel through it)."""
    topology, added = with_implicit_queues(app.topology, list(config.queues))
    for name in added:
        log.warning(
            "queue %r is in --queues but in no topology file: declaring it durable, dead-lettering to %s.dead",
            name,
            name,
        )
    retry_landings = [("", queue) for queue in config.queues]  # retries go back through the cascade
    settings = app.settings
    return with_delays(topology, retry_landings, prefix=settings.delay_prefix, queue_type=settings.delay_queue_type)


def provision(app: App, topology: Topology) -> None:
    """Declare what is missing before any process starts; a conflict stops the worker.

    Through aio-pika, which the consumers load anyway: pika would stay resident in every forked
    process for this one call (about 4 MiB each)."""
    from amqptasks.aio.connection import aconnect
    from amqptasks.aio.topology import aprovision

    async def declare() -> None:
        connection = await aconnect(app.settings, f"amqptasks worker provisioning pid={os.getpid()}")
        try:
            await aprovision(connection, topology)
        finally:
            await connection.close()

    asyncio.run(declare())


def _die_with_parent() -> None:
    # A kill -9 of the main process must not leave consumers holding messages.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def run_consumer(app: App, topology: Topology, config: WorkerConfig, name: str) -> int:
    """Run one consumer in this process until stopped; 0 on a clean stop."""
    consumer = Consumer(app, topology, config, name)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        signals = {"count": 0}

        def on_term() -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                log.warning("second signal: exiting now; unacked messages return to the queue")
                os._exit(1)
            log.info("%s: stopping (running tasks get up to %ss)", name, config.grace)
            consumer.request_stop()

        loop.add_signal_handler(STOP_SIGNAL, on_term)
        await consumer.run()

    asyncio.run(main())
    return 0


def _child(app: App, topology: Topology, config: WorkerConfig, name: str, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    # Group-wide signals are the supervisor's to interpret (see the module docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = run_consumer(app, topology, config, name)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Supervisor:
    """Starts ``config.processes`` consumer processes and keeps them running until told to stop."""

    def __init__(self, app: App, topology: Topology, config: WorkerConfig) -> None:
        self.app = app
        self.topology = topology
        self.config = config
        self.processes: dict[int, BaseProcess] = {}
        self.stopping = False
        self.signals = 0
        self._context = multiprocessing.get_context("fork")

    def _start(self, index: int) -> None:
        name = f"Worker-{index}"
        process = self._context.Process(
            target=_child, args=(self.app, self.topology, self.config, name, os.getpid()), name=name, daemon=False
        )
        process.start()
        self.processes[index] = process

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: killing worker processes now; unacked messages return to the queue")
            for process in self.processes.values():
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGKILL)
            os._exit(1)
        log.info("%s received: stopping gracefully (up to %ss); send again to exit at once", signal.Signals(signum).name, self.config.grace)
        self.stopping = True
        for process in self.processes.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, STOP_SIGNAL)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(1, self.config.processes + 1):
            self._start(index)
        failed = False
        while self.processes:
            time.sleep(0.2)
            for index, process in list(self.processes.items()):
                if process.is_alive():
                    continue
                process.join()
                code = process.exitcode
                del self.processes[index]
                if self.stopping or (self.config.burst and code == 0):
                    failed |= code != 0
                    continue
                log.error("%s exited unexpectedly (exit code %s); restarting it", process.name, code)
                self._start(index)
        return 1 if failed else 0


def run_worker(app: App, config: WorkerConfig, *, loglevel: str = "info") -> int:
    """Provision, print the banner, run the consumer processes; the process exit code."""
    configure_logging(loglevel)
    topology = prepare_topology(app, config)
    provision(app, topology)
    print(banner(app, topology, config), file=sys.stderr, flush=True)
    return Supervisor(app, topology, config).run()
