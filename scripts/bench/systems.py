"""What runs in each scenario: the systems, their workers, the entities they declare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common import BIN, PYTHON, TASKS_DIR, TOPOLOGY


@dataclass(frozen=True)
class System:
    """One contender in one scenario.

    ``key`` goes to client.py; ``family`` picks the worker and the broker entities to clean up;
    ``vs`` names the amqptasks contender a peer's ratio is taken against (None for that one).
    """

    key: str
    label: str
    family: str
    note: str = ""
    vs: str | None = None
    env: dict[str, object] = field(default_factory=dict)

    @property
    def is_ours(self) -> bool:
        return self.family.startswith("amqptasks")


def entities(family: str, queue: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) a system declares for ``queue``: deleted after each measurement."""
    if family.startswith("amqptasks"):  # and the quorum landing queues amqptasks declares for each queue
        from amqptasks.core.delays import landing_queue

        queues = [queue, f"{queue}.dead"]
        return [*queues, *(landing_queue("", name) for name in queues)], [f"{queue}.dlx"]
    return {
        "celery": ([queue], [queue]),
        "dramatiq": ([queue, f"{queue}.DQ", f"{queue}.XQ"], []),
        "taskiq": ([queue, f"{queue}_dead"], [f"{queue}_x"]),
    }.get(family, ([queue], []))


def write_topology(directory: Path, queue: str) -> Path:
    """amqptasks's topology for ``queue``: the queue, dead-lettered to ``queue.dead``."""
    path = directory / f"{queue}.yaml"
    path.write_text(TOPOLOGY.format(q=queue))
    return path


def worker_command(family: str, queue: str, processes: int, rpc: bool = False) -> tuple[list[str], int]:
    """(command, consumers on ``queue`` once it is ready) for ``processes`` worker processes."""
    n = str(processes)
    if family == "amqptasks":
        return [PYTHON, "-m", "amqptasks", "worker", "-A", "bench_amqptasks", "--queues", queue,
                "--processes", n, "--loglevel", "warning"], processes
    if family == "celery":  # prefork: one consumer in the main process feeds the pool
        return [str(BIN / "celery"), "-A", "bench_celery", "worker", "-P", "prefork", "-c", n, "-Q", queue,
                "--loglevel", "warning"], 1
    if family == "dramatiq":  # threads: its default (8 per process)
        return [str(BIN / "dramatiq"), "bench_dramatiq", "-p", n], processes
    if family == "faststream":
        return [str(BIN / "faststream"), "run", "bench_faststream:app", "--workers", n, "--log-level", "warning"], processes
    if family == "taskiq":
        return [str(BIN / "taskiq"), "worker", "bench_taskiq:broker", "--workers", n, "--log-level", "WARNING"], processes
    kind = "pika" if family == "raw_pika" else "aiopika"  # raw consumers: always one process
    return [PYTHON, str(TASKS_DIR / "raw_consumer.py"), kind, *(["--rpc"] if rpc else [])], 1


CONFIRM = {"confirm": True}
SAME_MESSAGE = {"same_message": True}

PUBLISH = [
    System("at_sync", "amqptasks delay()", "amqptasks", "sync, one by one, confirm each"),
    System("at_batch", "amqptasks send_many()", "amqptasks", "sync, 1000 per call, pipelined confirms"),
    System("at_async", "amqptasks adelay()", "amqptasks", "asyncio, 256 in flight, confirms"),
    System("at_async_many", "amqptasks asend_many()", "amqptasks", "asyncio, 256 per call, confirms"),
    System("celery", "Celery delay()", "celery", "default: no confirms", vs="at_sync"),
    System("celery_confirm", "Celery delay() +confirm", "celery", "confirm_publish=True", vs="at_sync", env=CONFIRM),
    System("dramatiq", "Dramatiq send()", "dramatiq", "default: no confirms", vs="at_sync"),
    System("dramatiq_confirm", "Dramatiq send() +confirm", "dramatiq", "confirm_delivery=True", vs="at_sync", env=CONFIRM),
    System("faststream", "FastStream publish()", "faststream", "default confirms on, 256 in flight, persist=True", vs="at_async"),
    System("taskiq", "Taskiq kiq()", "taskiq", "default confirms on, 256 in flight", vs="at_async"),
    System("raw_pika", "raw pika", "raw_pika", "BlockingConnection, confirm each", vs="at_sync"),
    System("raw_aiopika", "raw aio-pika", "raw_aiopika", "256 confirms in flight", vs="at_async"),
    System("raw_pika_same", "raw pika, our message", "raw_pika", "as raw pika, sending the message delay() sends",
           vs="at_sync", env=SAME_MESSAGE),
    System("raw_aiopika_same", "raw aio-pika, our message", "raw_aiopika", "as raw aio-pika, sending the message adelay() sends",
           vs="at_async", env=SAME_MESSAGE),
]

DRAIN = [
    System("at", "amqptasks", "amqptasks", "--processes 2 (8 threads, prefetch 32 each), def task"),
    System("at_async_def", "amqptasks async def", "amqptasks", "--processes 2, async def task", vs="at"),
    System("celery", "Celery", "celery", "prefork -c 2 (prefetch x4)", vs="at"),
    System("dramatiq", "Dramatiq", "dramatiq", "-p 2 (8 threads each)", vs="at"),
    System("faststream", "FastStream", "faststream", "--workers 2, async handler", vs="at"),
    System("taskiq", "Taskiq", "taskiq", "--workers 2, async task (qos 10)", vs="at"),
    System("raw_pika", "raw pika", "raw_pika", "1 process, prefetch 32", vs="at"),
    System("raw_aiopika", "raw aio-pika", "raw_aiopika", "1 process, prefetch 32", vs="at"),
]
PREFILL = {"at": "at_batch", "at_async_def": "at_async_def", "raw_aiopika": "raw_pika"}

RPC = [
    System("at_sync", "amqptasks delay().get()", "amqptasks", "direct reply-to, 1 worker process"),
    System("at_async", "amqptasks adelay()/aget()", "amqptasks", "direct reply-to, 1 worker process", vs="at_sync"),
    System("celery", "Celery rpc://", "celery", "prefork -c 1, rpc:// result backend", vs="at_sync", env={"rpc": True}),
    System("faststream", "FastStream request()", "faststream", "--workers 1, direct reply-to", vs="at_sync", env={"rpc": True}),
    System("raw_pika", "raw pika direct reply-to", "raw_pika", "raw responder, 1 process (the floor)", vs="at_sync"),
    System("raw_pika_confirm", "raw pika + confirms", "raw_pika", "the floor with publisher confirms, as amqptasks sends",
           vs="at_sync", env=CONFIRM),
]

MEMORY = [
    System("at", "amqptasks", "amqptasks", "--processes 2"),
    System("celery", "Celery", "celery", "prefork -c 2", vs="at"),
    System("dramatiq", "Dramatiq", "dramatiq", "-p 2 (8 threads each)", vs="at"),
    System("faststream", "FastStream", "faststream", "--workers 2", vs="at"),
    System("taskiq", "Taskiq", "taskiq", "--workers 2", vs="at"),
    System("raw_pika", "raw pika", "raw_pika", "1 process (reference)", vs="at"),
]

DELAY = [
    System("at", "amqptasks countdown", "amqptasks", "broker-side delay, 1 worker process"),
    System("celery", "Celery countdown", "celery", "held by the worker until due, prefork -c 1", vs="at"),
    System("dramatiq", "Dramatiq delay", "dramatiq", "held by the worker until due, -p 1", vs="at"),
]

SCENARIOS = {"publish": PUBLISH, "drain": DRAIN, "rpc": RPC, "memory": MEMORY, "delay": DELAY}
