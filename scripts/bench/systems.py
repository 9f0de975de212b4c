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


def _safe_default() -> list[str]:
    """Worker flags that give the safe default: every plain ``def`` task on a worker thread.

    While the worker still runs plain tasks proven instant on its event loop unless told
    ``--no-inline`` (WorkerConfig.inline defaults to True), the benchmark passes that flag; once
    running on the loop is a per-task opt-in (issue 15, item 1), the default is already safe."""
    from amqptasks.worker.config import WorkerConfig

    return ["--no-inline"] if getattr(WorkerConfig(), "inline", False) is True else []


IO_SLOTS = 32  # per process, 2 processes: the I/O-bound scenario's 64 concurrent slots per system
IO_SLEEP = 0.01  # seconds each of its tasks waits (BENCH_SLEEP's default in tasks/)
IO_CEILING = 2 * IO_SLOTS / IO_SLEEP  # tasks/s if every slot always waited and nothing else took time


def worker_command(family: str, queue: str, processes: int, rpc: bool = False, io: bool = False) -> tuple[list[str], int]:
    """(command, consumers on ``queue`` once it is ready) for ``processes`` worker processes.

    ``io``: the I/O-bound scenario's configuration, ``IO_SLOTS`` tasks at once per process."""
    n, slots = str(processes), str(IO_SLOTS)
    if family == "amqptasks":
        sized = ["--threads", slots, "--prefetch", slots] if io else []
        return [PYTHON, "-m", "amqptasks", "worker", "-A", "bench_amqptasks", "--queues", queue,
                "--processes", n, *sized, *_safe_default(), "--loglevel", "warning"], processes
    if family == "celery":  # prefork: one consumer in the main process feeds the pool; io: one process of threads
        pool = ["-P", "threads", "-c", str(IO_SLOTS * processes)] if io else ["-P", "prefork", "-c", n]
        return [str(BIN / "celery"), "-A", "bench_celery", "worker", *pool, "-Q", queue,
                "--loglevel", "warning"], 1
    if family == "dramatiq":  # threads: its default (8 per process); io: 32
        return [str(BIN / "dramatiq"), "bench_dramatiq", "-p", n, *(["-t", slots] if io else [])], processes
    if family == "faststream":
        return [str(BIN / "faststream"), "run", "bench_faststream:app", "--workers", n, "--log-level", "warning"], processes
    if family == "taskiq":  # io: 32 async tasks at once per process (and qos 32, BENCH_QOS in the System's env)
        limit = ["--max-async-tasks", slots] if io else []
        return [str(BIN / "taskiq"), "worker", "bench_taskiq:broker", "--workers", n, *limit,
                "--log-level", "WARNING"], processes
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
    System("at", "amqptasks", "amqptasks", "--processes 2 (8 threads, prefetch 32 each), def task on a thread"),
    System("at_async_def", "amqptasks async def", "amqptasks", "--processes 2, async def task", vs="at"),
    System("celery", "Celery", "celery", "prefork -c 2 (prefetch x4)", vs="at"),
    System("dramatiq", "Dramatiq", "dramatiq", "-p 2 (8 threads each)", vs="at"),
    System("faststream", "FastStream", "faststream", "--workers 2, async handler", vs="at"),
    System("taskiq", "Taskiq", "taskiq", "--workers 2, async task (qos 10)", vs="at"),
    System("raw_pika", "raw pika", "raw_pika", "1 process, prefetch 32", vs="at"),
    System("raw_aiopika", "raw aio-pika", "raw_aiopika", "1 process, prefetch 32", vs="at"),
]
PREFILL = {"at": "at_batch", "at_async_def": "at_async_def", "raw_aiopika": "raw_pika"}

SLEEPY = {"task": "sleepy"}
IO = [
    System("at", "amqptasks def", "amqptasks", "--processes 2 --threads 32 --prefetch 32, time.sleep(0.01)", env=SLEEPY),
    System("at_async_def", "amqptasks async def", "amqptasks", "--processes 2 --prefetch 32, asyncio.sleep(0.01)",
           env={"task": "asleepy"}),
    System("dramatiq", "Dramatiq", "dramatiq", "-p 2 -t 32, time.sleep(0.01)", vs="at", env=SLEEPY),
    System("celery", "Celery threads", "celery", "-P threads -c 64 (1 process), time.sleep(0.01)", vs="at", env=SLEEPY),
    System("taskiq", "Taskiq", "taskiq", "--workers 2 --max-async-tasks 32, qos 32, asyncio.sleep(0.01)",
           vs="at_async_def", env={**SLEEPY, "qos": IO_SLOTS}),
]
IO_PREFILL = {"at": "at_batch", "at_async_def": "at_batch"}

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

SCENARIOS = {"publish": PUBLISH, "drain": DRAIN, "io": IO, "rpc": RPC, "memory": MEMORY, "delay": DELAY}
