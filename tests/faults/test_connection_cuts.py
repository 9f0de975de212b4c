"""Scenario 3: every connection cut, five times, while a producer sends and a worker consumes.

``rabbitmqctl close_all_connections`` on the private ``fault_broker`` node (never the shared
broker: it would cut everybody's connections) drops the worker's and the producer's connections
mid-stream. The promise: both recover by themselves — the worker reconnects and resumes, the
producer republishes what was not confirmed — and nothing confirmed is lost. Tasks may run twice
(an ack lost with the connection, a send republished whose first copy had arrived): duplicates,
counted and reported.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.faults.ledger import record, tally, wait_complete
from tests.faults.scenario import (
    Workdir,
    imported,
    make_module,
    run_burst,
    stop_worker,
    wait_settled,
)
from tests.integration.workerproc import WorkerProcess, queue_counts

CUTS = 5
FIRST_CUT_AFTER = 2.0  # seconds after the producer starts
CUT_EVERY = 3.0
BATCH = 50  # tasks per send_many: one confirm wait each
PAUSE = 0.05  # between batches: ~1,000 tasks/s, a steady stream rather than a flood

MODULE = "fk_cuts"
BODY = """
@app.task(queue=QUEUE, bind=True, ignore_result=True)
def work(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")
"""


@pytest.fixture
def private_workdir(fault_broker, tmp_path: Path, unique: str) -> Iterator[Workdir]:  # type: ignore[no-untyped-def]
    """Like ``workdir``, on the private node: its queues and exchange are deleted there afterwards."""
    sys.path.insert(0, str(tmp_path))
    work = Workdir(tmp_path, unique)
    try:
        yield work
    finally:
        sys.path.remove(str(tmp_path))
        connection = pika.BlockingConnection(pika.URLParameters(fault_broker.url))
        try:
            for queue in (work.queue, work.dead):
                connection.channel().queue_delete(queue)
            connection.channel().exchange_delete(f"{work.queue}.dlx")
        finally:
            connection.close()


@pytest.mark.timeout(150)
def test_connection_cuts_lose_nothing(private_workdir: Workdir, fault_broker) -> None:  # type: ignore[no-untyped-def]
    """Five ``close_all_connections`` during a run: lost = 0; producer and worker carry on."""
    work = private_workdir
    url = fault_broker.url
    make_module(work, MODULE, BODY)
    worker = WorkerProcess(work.path, url, "-A", MODULE, "--queues", work.queue, "--processes", "2", "--loglevel", "info")
    sent: list[str] = []
    errors: list[BaseException] = []
    stop_sending = threading.Event()
    cut_times: list[float] = []
    try:
        worker.wait_consuming(work.queue, processes=2)
        with imported(MODULE) as tasks:
            tasks.app.configured(broker=url)  # the module's App would otherwise use the shared broker

            def produce() -> None:
                n = 0
                try:
                    while not stop_sending.is_set():
                        results = tasks.app.send_many(tasks.work.s(i) for i in range(n, n + BATCH))
                        sent.extend(result.id for result in results)  # confirmed by the broker
                        n += BATCH
                        time.sleep(PAUSE)
                except BaseException as exc:  # the producer must recover by itself: any error fails
                    errors.append(exc)

            started = time.monotonic()
            producer = threading.Thread(target=produce, name="fk-cuts-producer", daemon=True)
            producer.start()
            time.sleep(FIRST_CUT_AFTER)
            for cut in range(CUTS):
                cut_times.append(time.monotonic() - started)
                fault_broker.ctl("close_all_connections", f"amqptasks fault suite: cut {cut + 1} of {CUTS} ({uuid.uuid4().hex[:6]})")
                if cut < CUTS - 1:
                    time.sleep(CUT_EVERY)
            time.sleep(2.0)  # keep sending a little after the last cut: the producer must have recovered
            stop_sending.set()
            producer.join(timeout=60)
            assert not producer.is_alive(), "the producer is stuck"
        wait_complete(sent, work.done, timeout=60)
        wait_settled(url, work.queue, timeout=20)
        alive = worker.process.poll() is None
        code = stop_worker(worker)
    finally:
        stop_sending.set()
        worker.stop()
    log = worker.log
    run_burst(work, url, MODULE)

    losses = log.count("connection lost")
    delays = re.findall(r"reconnecting in ([0-9.]+)s", log)
    result = record(tally("3 connection cuts", sent, work.done, started,
                          detail=f"{CUTS} close_all_connections at {', '.join(f'{t:.0f}s' for t in cut_times)}; "
                                 f"worker 2 processes saw {losses} connection losses (reconnect delays {', '.join(delays)} s); "
                                 f"producer errors: {len(errors)}"))  # fmt: skip
    assert not errors, f"the producer did not recover by itself: {errors[0]!r}"
    assert alive and code == 0, log[-3000:]
    assert losses >= CUTS, f"the worker noticed {losses} of {CUTS} cuts:\n{log[-3000:]}"
    assert result.lost == 0, result.line()
    assert queue_counts(url, work.queue)[0] == 0
    assert queue_counts(url, work.dead)[0] == 0
