"""Shared plumbing for the worker-side fault scenarios: a generated tasks module, its queues, the
worker's child processes, and draining what is left.

The tasks modules come from :func:`tests.integration.workerproc.write_app` (a queue with its
dead-letter queue, a ``record(line)`` helper appending to ``done.txt``); scenario tasks record
``"<task id> <redelivered 0|1>"``, the format :mod:`tests.faults.ledger` counts.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.workerproc import WorkerProcess, queue_counts, write_app


@dataclass(frozen=True)
class Workdir:
    """Where a scenario's tasks module lives, the queue it uses and its done file."""

    path: Path
    queue: str

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"

    @property
    def done(self) -> Path:
        return self.path / "done.txt"


@pytest.fixture
def workdir(tmp_path: Path, unique: str, cleanup) -> Iterator[Workdir]:  # type: ignore[no-untyped-def]
    """A directory for a generated tasks module, importable, with a unique queue that is deleted
    afterwards together with its dead-letter queue and exchange."""
    queue = unique
    cleanup.queue(queue)
    cleanup.queue(f"{queue}.dead")
    cleanup.exchange(f"{queue}.dlx")
    sys.path.insert(0, str(tmp_path))
    try:
        yield Workdir(tmp_path, queue)
    finally:
        sys.path.remove(str(tmp_path))


def make_module(work: Workdir, module: str, body: str) -> Path:
    """Write ``<module>.py`` (tasks routed to ``work.queue``); returns its topology file."""
    return write_app(work.path, module, work.queue, f"QUEUE = {work.queue!r}\n" + body)


def import_module(module: str) -> ModuleType:
    """Import (afresh) a generated tasks module in the test process, to send through its App."""
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    return importlib.import_module(module)


@contextmanager
def imported(module: str) -> Iterator[ModuleType]:
    """The module for the length of the block; its App's connections are closed afterwards."""
    tasks = import_module(module)
    try:
        yield tasks
    finally:
        tasks.app.close()
        sys.modules.pop(module, None)


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (the worker supervisor's consumer processes)."""
    children: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in threads:
        try:
            children += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(children))


def stop_worker(worker: WorkerProcess, timeout: float = 60) -> int:
    """SIGTERM (graceful: running tasks finish and are acked) and wait; kill the group if it hangs."""
    if worker.process.poll() is None:
        worker.signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=timeout)
    finally:
        worker.stop()


def run_burst(work: Workdir, broker_url: str, module: str, timeout: float = 60) -> str:
    """Drain what is left in ``work.queue`` with a ``--burst`` worker; returns its log.

    Used after a scenario's worker stopped: copies of tasks that were redelivered after a fault
    (kill, cut) may still wait in the queue, and they count as duplicates when they run.
    """
    if queue_counts(broker_url, work.queue)[0] == 0:
        return ""
    worker = WorkerProcess(
        work.path, broker_url, "-A", module, "--queues", work.queue, "--processes", "1", "--burst", "--loglevel", "warning"
    )
    try:
        code = worker.wait(timeout=timeout)
    finally:
        worker.stop()
    assert code == 0, f"burst worker exited {code}:\n{worker.log}"
    return worker.log


def wait_settled(broker_url: str, queue: str, timeout: float, quiet: float = 1.0) -> bool:
    """Wait until ``queue`` has no ready messages for ``quiet`` seconds in a row."""
    deadline = time.monotonic() + timeout
    empty_since: float | None = None
    while time.monotonic() < deadline:
        if queue_counts(broker_url, queue)[0] == 0:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= quiet:
                return True
        else:
            empty_since = None
        time.sleep(0.1)
    return False
