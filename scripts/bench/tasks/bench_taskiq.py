"""Taskiq tasks for the benchmark; configured by BENCH_* environment variables.

Taskiq-aio-pika declares quorum queues by default; the benchmark asks for classic ones, like every
other system here, so the broker does the same work for each.
"""

from __future__ import annotations

import asyncio
import os

from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)
SLEEP = float(os.environ.get("BENCH_SLEEP", "0.01"))  # the I/O-bound scenario's wait

broker = AioPikaBroker(
    os.environ["BENCH_URL"],
    qos=int(os.environ.get("BENCH_QOS", "10")),  # its default; the I/O-bound scenario gives it 32 slots
    exchange=Exchange(name=f"{QUEUE}_x"),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC)],
    dead_letter_queue=Queue(name=f"{QUEUE}_dead", type=QueueType.CLASSIC),
)


@broker.task
async def noop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")


@broker.task
async def sleepy() -> None:
    await asyncio.sleep(SLEEP)
    with open(DONE, "ab") as f:
        f.write(b".")
