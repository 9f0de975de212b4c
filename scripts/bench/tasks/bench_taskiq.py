"""Taskiq tasks for the benchmark; configured by BENCH_* environment variables.

Taskiq-aio-pika declares quorum queues by default; the benchmark asks for classic ones, like every
other system here, so the broker does the same work for each.
"""

from __future__ import annotations

import os

from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)

broker = AioPikaBroker(
    os.environ["BENCH_URL"],
    exchange=Exchange(name=f"{QUEUE}_x"),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC)],
    dead_letter_queue=Queue(name=f"{QUEUE}_dead", type=QueueType.CLASSIC),
)


@broker.task
async def noop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")
