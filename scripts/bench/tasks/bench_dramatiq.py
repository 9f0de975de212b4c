"""Dramatiq actors for the benchmark; configured by BENCH_* environment variables."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)
SLEEP = float(os.environ.get("BENCH_SLEEP", "0.01"))  # the I/O-bound scenario's wait

broker = RabbitmqBroker(url=os.environ["BENCH_URL"], confirm_delivery=bool(os.environ.get("BENCH_CONFIRM")))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    with open(DONE, "ab") as f:
        f.write(b".")


@dramatiq.actor(queue_name=QUEUE)
def late(due: float) -> None:
    lateness = time.time() - due
    with open(DONE, "a") as f:
        f.write(f"{lateness:.6f}\n")


@dramatiq.actor(queue_name=QUEUE)
def sleepy() -> None:
    time.sleep(SLEEP)
    with open(DONE, "ab") as f:
        f.write(b".")
