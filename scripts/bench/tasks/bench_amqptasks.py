"""amqptasks tasks for the benchmark; configured by BENCH_* environment variables."""

from __future__ import annotations

import asyncio
import os
import time

from amqptasks import App

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)
SLEEP = float(os.environ.get("BENCH_SLEEP", "0.01"))  # the I/O-bound scenario's wait

app = App("bench_amqptasks", broker=os.environ["BENCH_URL"], topology=os.environ["BENCH_TOPOLOGY"])


@app.task(queue=QUEUE, ignore_result=True)
def noop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")


@app.task(queue=QUEUE, ignore_result=True)
async def anoop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")


@app.task(queue=QUEUE, ignore_result=True)
def sleepy() -> None:
    time.sleep(SLEEP)
    with open(DONE, "ab") as f:
        f.write(b".")


@app.task(queue=QUEUE, ignore_result=True)
async def asleepy() -> None:
    await asyncio.sleep(SLEEP)
    with open(DONE, "ab") as f:
        f.write(b".")


@app.task(queue=QUEUE)
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue=QUEUE, ignore_result=True)
def late(due: float) -> None:
    lateness = time.time() - due
    with open(DONE, "a") as f:
        f.write(f"{lateness:.6f}\n")
