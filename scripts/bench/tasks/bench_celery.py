"""Celery tasks for the benchmark; configured by BENCH_* environment variables."""

from __future__ import annotations

import os
import time

from celery import Celery

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)
SLEEP = float(os.environ.get("BENCH_SLEEP", "0.01"))  # the I/O-bound scenario's wait

app = Celery("bench_celery", broker=os.environ["BENCH_URL"], backend="rpc://" if os.environ.get("BENCH_RPC") else None)
app.conf.task_default_queue = QUEUE
if os.environ.get("BENCH_CONFIRM"):
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(ignore_result=True)
def noop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(ignore_result=True)
def late(due: float) -> None:
    lateness = time.time() - due
    with open(DONE, "a") as f:
        f.write(f"{lateness:.6f}\n")


@app.task(ignore_result=True)
def sleepy() -> None:
    time.sleep(SLEEP)
    with open(DONE, "ab") as f:
        f.write(b".")
