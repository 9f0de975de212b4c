"""Worker start-up: topology, provisioning, banner and the consumer processes; then the supervisor.

The consumers are forked once everything they need is loaded (they start at once and share those
pages); then this process execs into the small supervisor (``worker/supervisor.py``), so the app and
aio-pika stay resident only in the processes that consume.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from amqptasks.core.deadletter import with_implicit_queues
from amqptasks.core.failover import NodeRing
from amqptasks.core.provision import with_delays
from amqptasks.errors import BrokerRefused, BrokerUnavailable, ConfigurationError
from amqptasks.worker.banner import banner
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.consumer import Consumer
from amqptasks.worker.supervisor import (
    STOP_SIGNAL,
    block_signals,
    configure_logging,
    fork_consumer,
)

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.core.topology import Topology

log = logging.getLogger("amqptasks.worker")


def log_level(name: str) -> int:
    """``--loglevel`` as a logging level."""
    numeric = logging.getLevelName(name.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(f"--loglevel {name!r} is not one of debug, info, warning, error")
    return numeric


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


def provision(app: App, topology: Topology, wait: bool = False) -> None:
    """Declare what is missing before any process starts; a conflict stops the worker.

    ``wait``: while no broker node answers, log the attempt and try again (backoff of
    core/failover.py, at most 5 s): a worker may start before its broker (Kubernetes starts pods
    in any order). Without it, BrokerUnavailable ends the worker at once (exit code 3), as does a
    node that answers and refuses (BrokerRefused: credentials, vhost access, TLS) with it.

    Through aio-pika, which the consumers load anyway: pika would stay resident in every forked
    process for this one call (about 4 MiB each)."""
    from amqptasks.aio.connection import aconnect
    from amqptasks.aio.topology import aprovision

    async def declare() -> None:
        ring = NodeRing(len(app.settings.addresses))
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = await aconnect(app.settings, f"amqptasks worker provisioning pid={os.getpid()}", ring)
                break
            except BrokerRefused:
                raise  # a node answered and refused (credentials, access, TLS): waiting will not fix it
            except BrokerUnavailable as exc:
                if not wait:
                    raise
                pause = ring.round_failed()
                log.warning("waiting for the broker (attempt %d): %s; trying again in %.1fs (--no-wait: exit instead)", attempt, exc, pause)
                await asyncio.sleep(pause)
        log.info("connected to the broker node at %s%s", connection.describe_node(), f" after {attempt} attempts" if attempt > 1 else "")
        try:
            await aprovision(connection, topology)
        finally:
            await connection.close()

    asyncio.run(declare())


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
        # Forked with it blocked (supervisor.fork_consumer): a stop sent during start-up waited until now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {STOP_SIGNAL})
        await consumer.run()  # logs "<name> stopped" last

    asyncio.run(main())
    return 0


def _consume_forked(app: App, topology: Topology, config: WorkerConfig, level: int, index: int) -> int:
    configure_logging(level, f"Worker-{index}")
    return run_consumer(app, topology, config, f"Worker-{index}")


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages mapped otherwise
    except (OSError, AttributeError):  # not glibc
        pass


def run_worker(app: App, config: WorkerConfig, options: dict[str, Any]) -> NoReturn:
    """Provision, print the banner, fork the consumers, become the supervisor (never returns).

    ``options`` are the CLI's: the supervisor keeps them to start a replacement consumer.
    """
    level = log_level(options["loglevel"])
    configure_logging(level, "MainProcess")
    topology = prepare_topology(app, config)
    # --no-wait, and --burst (a cron or CI job: it should fail, not hang), keep the fail-fast exit 3
    provision(app, topology, wait=bool(options.get("wait", True)) and not config.burst)
    print(banner(app, topology, config), file=sys.stderr, flush=True)
    _release_free_memory()  # before the forks: each consumer would carry the freed pages too
    block_signals()  # until the supervisor (after the exec below) and each consumer handle them
    pids: dict[int, int] = {}
    try:
        for index in range(1, config.processes + 1):
            pids[index] = fork_consumer(partial(_consume_forked, app, topology, config, level, index))
        sys.stdout.flush()
        sys.stderr.flush()
        state = {"pids": pids, "loglevel": level, "options": options}
        os.execv(sys.executable, [sys.executable, "-m", "amqptasks.worker.supervisor", json.dumps(state)])
    except BaseException:
        for pid in pids.values():  # nobody would supervise them
            os.kill(pid, signal.SIGKILL)
        raise
