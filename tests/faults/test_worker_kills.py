"""Scenario 1: ``kill -9`` of worker processes while they drain 10,000 tasks.

A worker with two consumer processes drains the queue; every 2 s one of the two is killed with
SIGKILL (alternating), and the supervisor starts a new one. Late acks promise that nothing is lost:
the messages a killed process held unacked return to the queue and run again. A task that finished
but whose ack died with the process runs twice: that is a duplicate, counted and reported.

Runs on the shared broker: killing worker processes does not disturb the broker.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.ledger import record, tally, wait_complete
from tests.faults.scenario import (
    Workdir,
    child_pids,
    imported,
    make_module,
    run_burst,
    stop_worker,
    wait_settled,
    workdir,
)
from tests.integration.workerproc import WorkerProcess, queue_counts

TASKS = 10_000
KILL_EVERY = 2.0  # seconds
MIN_KILLS = 5
# A little work per task, and few threads, so that draining takes ~20 s on 2 shared cores: long
# enough for ~8 kills, each of which finds tasks running and unacked.
WORK_SECONDS = 0.006
THREADS = 2
PREFETCH = 16

MODULE = "fk_kills"
BODY = f"""
@app.task(queue=QUEUE, bind=True, ignore_result=True)
def work(self, n):
    time.sleep({WORK_SECONDS})
    record(f"{{self.request.id}} {{int(self.request.redelivered)}}")
"""


def _done_ids(work: Workdir) -> set[str]:
    if not work.done.exists():
        return set()
    return {line.split(" ", 1)[0] for line in work.done.read_text().splitlines() if line}


@pytest.mark.timeout(150)
def test_kill_9_of_worker_processes_loses_nothing(workdir: Workdir, broker_url: str) -> None:
    """10,000 tasks, 2 processes, one killed every 2 s: every task completes (lost = 0)."""
    make_module(workdir, MODULE, BODY)
    with imported(MODULE) as tasks:
        results = tasks.app.send_many(tasks.work.s(n) for n in range(TASKS))
    sent = [r.id for r in results]
    assert len(set(sent)) == TASKS

    started = time.monotonic()
    worker = WorkerProcess(
        workdir.path, broker_url, "-A", MODULE, "--queues", workdir.queue, "--processes", "2",
        "--threads", str(THREADS), "--prefetch", str(PREFETCH), "--loglevel", "warning",
    )  # fmt: skip
    kills = 0
    try:
        worker.wait_consuming(workdir.queue, processes=2)
        wanted = set(sent)
        deadline = time.monotonic() + 90
        next_kill = time.monotonic() + KILL_EVERY
        while time.monotonic() < deadline and not wanted <= _done_ids(workdir):
            if time.monotonic() < next_kill:
                time.sleep(0.1)
                continue
            next_kill += KILL_EVERY
            children = child_pids(worker.process.pid)
            if not children:
                continue  # both being restarted right now; try at the next tick
            victim = children[kills % len(children)]
            try:
                os.kill(victim, signal.SIGKILL)  # a child of the supervisor we started
                kills += 1
            except ProcessLookupError:
                pass
            assert worker.process.poll() is None, f"the supervisor died:\n{worker.log}"
        wait_complete(sent, workdir.done, timeout=10)
        # Copies redelivered by the last kill may still be queued: let the worker finish them.
        wait_settled(broker_url, workdir.queue, timeout=20)
        assert worker.process.poll() is None, f"the supervisor died:\n{worker.log}"
        code = stop_worker(worker)
    finally:
        worker.stop()
    log = worker.log
    run_burst(workdir, broker_url, MODULE)

    result = record(tally("1 worker kills", sent, workdir.done, started,
                          detail=f"{kills} kill -9 of a consumer process every {KILL_EVERY:g}s, 2 processes"))  # fmt: skip
    assert code == 0, log
    assert kills >= MIN_KILLS, f"only {kills} kills happened: the drain was too fast for the scenario to mean much"
    assert log.count("exited unexpectedly") >= kills, log  # the supervisor saw (and restarted) every kill
    assert result.lost == 0, result.line()
    assert queue_counts(broker_url, workdir.queue)[0] == 0
    assert queue_counts(broker_url, workdir.dead)[0] == 0  # no task failed
