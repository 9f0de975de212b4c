"""FastStream subscribers for the benchmark; configured by BENCH_* environment variables."""

from __future__ import annotations

import os

from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitQueue

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)

broker = RabbitBroker(os.environ["BENCH_URL"])
queue = RabbitQueue(QUEUE, durable=True)
app = FastStream(broker)

if os.environ.get("BENCH_RPC"):

    @broker.subscriber(queue)
    async def add(body: dict[str, int]) -> int:
        return body["x"] + body["y"]

else:

    @broker.subscriber(queue)
    async def noop(body: bytes) -> None:
        with open(DONE, "ab") as f:
            f.write(b".")
