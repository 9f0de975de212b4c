"""A task that runs longer than the broker's consumer_timeout runs once, then is dead-lettered.

The private node's delivery acknowledgement timeout is set to 3 s (and its channels check it every
0.5 s instead of every minute) for this test only; a task sleeps 6 s. Before worker/overrun.py the
broker closed the channel, requeued the message, and the worker ran it again and again (measured on
RabbitMQ 3.10.8: 11 runs in 40 s, never dead-lettered).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from tests.faults.conftest import FaultApp, FaultBroker
from tests.integration.workerproc import drain, queue_counts

SLOW_TASK = """
@app.task(queue=QUEUE, bind=True)
def linger(self):
    record(f"{self.request.id} {int(self.request.redelivered)}")
    time.sleep(6)
"""
TIMEOUT_MS = 3000
WATCH = 40.0  # seconds: long enough for several timeouts and redeliveries


def _env_value(text: str, default: int) -> int:
    """The value in ``{ok,V}`` (rabbitmqctl eval's way of printing get_env), else ``default``."""
    found = re.search(r"\{ok,(\d+)\}", text)
    return int(found.group(1)) if found else default


@pytest.fixture
def short_consumer_timeout(fault_broker: FaultBroker) -> Iterator[None]:
    """consumer_timeout 3 s on the private node (checked every 0.5 s), put back afterwards. Both are
    set back to values, never unset: RabbitMQ 3.10's channels reset their connections when their tick
    interval is unset under them (measured)."""
    timeout = _env_value(fault_broker.ctl("eval", "application:get_env(rabbit, consumer_timeout)."), 1_800_000)
    tick = _env_value(fault_broker.ctl("eval", "application:get_env(rabbit, channel_tick_interval)."), 60_000)
    fault_broker.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {TIMEOUT_MS}), "
                             "application:set_env(rabbit, channel_tick_interval, 500).")
    try:
        yield
    finally:
        fault_broker.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {timeout}), "
                                 f"application:set_env(rabbit, channel_tick_interval, {tick}).")


@pytest.mark.timeout(180)
def test_a_task_longer_than_consumer_timeout_runs_once_and_is_dead_lettered(
    fault_app: Callable[..., FaultApp], short_consumer_timeout: None
) -> None:
    app = fault_app(queue_type="classic", body=SLOW_TASK)
    tasks = app.import_tasks()
    try:
        sent = tasks.linger.delay().id
    finally:
        app.close(tasks)
    worker = app.worker(processes=1)
    try:
        deadline = time.monotonic() + WATCH
        while time.monotonic() < deadline and queue_counts(app.url, f"{app.queue}.dead")[0] == 0:
            time.sleep(0.5)
        time.sleep(8)  # a further run, if any, would start and be recorded in this time
        runs = app.done.read_text().splitlines() if app.done.exists() else []
    finally:
        worker.stop()
    dead = drain(app.url, f"{app.queue}.dead")
    reasons = [str((p.headers or {}).get("x-amqptasks-reason")) for p, _ in dead]
    assert len(runs) == 1, f"ran {len(runs)} times in {WATCH:.0f}s (dead-lettered: {reasons}); worker log:\n{worker.log[-3000:]}"
    assert runs[0].split()[0] == sent
    assert len(dead) == 1 and reasons[0].startswith("consumer_timeout: "), reasons
    assert f"({TIMEOUT_MS} ms)" in reasons[0]
    assert queue_counts(app.url, app.queue)[0] == 0
