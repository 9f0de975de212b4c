"""Scenario 2: the broker application restarts while a producer sends and a worker consumes.

A producer thread sends 5,000 tasks one by one (sync, publisher confirms) to a quorum queue that a
2-process worker drains; meanwhile the private node runs ``stop_app`` / ``start_app``. Every send
that returned must complete; a send that raised an :class:`AmqpTasksError` is the only one the test
may send again (same task id, once the broker is back). The producer's App and the worker are the
same objects and processes before and after: both must recover on their own.

Sends are ``apply_async(task_id=...)`` (``delay()`` plus an id of the test's choosing) so that a send
that raised is sent again under the same id, as an idempotent caller would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import pytest

from amqptasks.errors import AmqpTasksError
from tests.faults.conftest import FaultApp, FaultBroker, duplicate_causes
from tests.faults.ledger import record, tally, wait_complete
from tests.faults.scenario import stop_worker

TASKS = 5_000
RESTART_AFTER = 1_500  # confirmed sends before the broker goes down
DOWN_FOR = 3.0  # seconds between stop_app and start_app
SEND_BOUND = 30.0  # no single send may take longer (connect + confirm timeouts + reconnect backoff)


@dataclass
class Sends:
    """What the producer thread saw, send by send."""

    confirmed: list[str] = field(default_factory=list)
    raised: dict[str, str] = field(default_factory=dict)  # task id -> exception type
    unexpected: list[BaseException] = field(default_factory=list)  # anything not an AmqpTasksError
    slowest: float = 0.0
    confirmed_at: list[float] = field(default_factory=list)


def produce(tasks: ModuleType, sends: Sends, stop: threading.Event) -> None:
    """Send TASKS tasks, each with its own id; record which returned and which raised."""
    for n in range(TASKS):
        if stop.is_set():
            return
        task_id = f"restart-{n:05d}"
        began = time.monotonic()
        try:
            tasks.work.apply_async(args=(n,), task_id=task_id)
        except AmqpTasksError as exc:
            sends.raised[task_id] = type(exc).__name__
            time.sleep(0.1)  # a real producer backs off too; without it the outage is a hot loop
        except BaseException as exc:  # a bug: recorded and failed on in the test body
            sends.unexpected.append(exc)
            return
        else:
            sends.confirmed.append(task_id)
            sends.confirmed_at.append(time.monotonic())
        finally:
            sends.slowest = max(sends.slowest, time.monotonic() - began)


@pytest.mark.timeout(180)
def test_broker_restart_loses_no_confirmed_task(fault_broker: FaultBroker, fault_app: Callable[..., FaultApp]) -> None:
    app = fault_app(queue_type="quorum")
    started = time.monotonic()
    worker = app.worker(processes=2)
    tasks: ModuleType | None = None
    stop = threading.Event()
    sends = Sends()
    producer: threading.Thread | None = None
    try:
        worker.wait_consuming(app.queue, processes=2, timeout=60)
        tasks = app.import_tasks()
        producer = threading.Thread(target=produce, args=(tasks, sends, stop), name="restart-producer", daemon=True)
        producer.start()
        deadline = time.monotonic() + 60
        while len(sends.confirmed) < RESTART_AFTER and producer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert producer.is_alive(), f"the producer finished before the restart: {sends.unexpected or 'too fast'}"
        fault_broker.stop_app()
        down_at = time.monotonic()
        time.sleep(DOWN_FOR)
        fault_broker.start_app()
        up_at = time.monotonic()
        producer.join(timeout=120)
        assert not producer.is_alive(), "the producer hung after the broker came back"
        assert not sends.unexpected, f"a send raised something other than an AmqpTasksError: {sends.unexpected!r}"
        after_restart = sum(1 for at in sends.confirmed_at if at > up_at)
        assert after_restart > 0, "the producer's App did not send again after the restart"
        # Sends that raised: the only ones the caller may (and here does) send again.
        for task_id in sends.raised:
            n = int(task_id.rsplit("-", 1)[1])
            tasks.work.apply_async(args=(n,), task_id=task_id)
        sent_ids = sends.confirmed + list(sends.raised)
        wait_complete(sent_ids, app.done, timeout=90)
        assert worker.process.poll() is None, f"the worker exited:\n{worker.log}"
        # Recovered by reconnecting, not by the supervisor replacing a crashed consumer process.
        assert "exited unexpectedly" not in worker.log, worker.log
        kinds = sorted(set(sends.raised.values()))
        result = record(
            tally(
                "2 broker restart",
                sent_ids,
                app.done,
                started,
                detail=(
                    f"{len(sends.raised)} sends raised ({', '.join(kinds) or 'none'}) and were re-sent; "
                    f"broker down {up_at - down_at:.1f}s; slowest send {sends.slowest:.1f}s; "
                    f"duplicates: {duplicate_causes(app.done, set(sends.raised))}"
                ),
            )
        )
        assert result.lost == 0, f"{result.lost} confirmed task(s) vanished\n{worker.log[-3000:]}"
        assert result.sent == TASKS
        assert sends.slowest < SEND_BOUND, f"a send took {sends.slowest:.1f}s"
    finally:
        stop.set()
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        if tasks is not None:
            app.close(tasks)
        stop_worker(worker, timeout=40)
