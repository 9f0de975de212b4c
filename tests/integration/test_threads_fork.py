"""The sync producer from many threads at once, and across fork (gunicorn --preload)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from amqptasks import App, AsyncResult, ResultUnavailable, Settings
from tests.integration.test_send_sync import queue_app, wait_count

THREADS = 16
PER_THREAD = 200


def test_16_threads_x_200_sends(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any) -> None:
    app = queue_app(tmp_path, unique, cleanup, broker_url)

    @app.task(name=f"{unique}.add", queue=unique)
    def add(x: int, y: int) -> int:
        return x + y

    errors: list[BaseException] = []
    ids: list[str] = []
    start_line = threading.Barrier(THREADS)

    def send_many(worker: int) -> None:
        try:
            start_line.wait()
            for i in range(PER_THREAD):
                ids.append(add.delay(worker, i).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send_many, args=(n,)) for n in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    try:
        assert not errors, errors[:3]
        assert len(set(ids)) == THREADS * PER_THREAD
        assert wait_count(channel, unique, THREADS * PER_THREAD) == THREADS * PER_THREAD
        assert app._sync is not None and 1 <= app._sync.connections <= THREADS
        print(f"{THREADS * PER_THREAD} confirmed sends from {THREADS} threads in {elapsed:.2f} s "
              f"over {app._sync.connections} connections")
    finally:
        app.close()


def _child(app: App, add: Any, sends: int, parents_result: AsyncResult) -> int:
    """Runs in the forked child: send with the inherited App; the exit code says how it went."""
    try:
        try:
            parents_result.get(timeout=1)
            raise AssertionError("the child read a result through the parent's connection")
        except ResultUnavailable as exc:
            assert "belongs to process" in str(exc)
        for i in range(sends):
            add.delay(os.getpid(), i)
        publisher = app._sync
        assert publisher is not None
        assert publisher._state.pid == os.getpid(), "the child reused the parent's pool"
        assert len(publisher._inherited) == 1, "the parent's producers were not set aside"
        app.close()
        return 0
    except BaseException as exc:  # report, never raise into the copy of pytest
        print(f"child failed: {exc!r}", flush=True)
        return 1


def test_fork_after_first_use(tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any) -> None:
    app = queue_app(tmp_path, unique, cleanup, broker_url)

    @app.task(name=f"{unique}.add", queue=unique)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        first = add.delay(0, 0)  # the parent's producer connection now exists (like gunicorn --preload)
        assert app._sync is not None
        parent_producer = app._sync._state.all[0]
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                os._exit(_child(app, add, 50, first))
            children.append(pid)
        add.delay(1, 1)  # the parent keeps using its connection while the children send
        for pid in children:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        add.delay(2, 2)  # ... and after they exited
        assert app._sync._state.all == [parent_producer] and parent_producer.broken is None
        assert wait_count(channel, unique, 3 + 2 * 50) == 103
    finally:
        app.close()


def test_an_idle_producer_keeps_its_connection_through_heartbeats(
    tmp_path: Path, unique: str, cleanup: Any, broker_url: str, channel: Any
) -> None:
    app = queue_app(tmp_path, unique, cleanup, broker_url)
    app.settings = Settings(broker_url=broker_url, heartbeat=2)  # the broker drops a silent client after ~4 s

    @app.task(name=f"{unique}.add", queue=unique)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        add.delay(1, 1)
        time.sleep(7)  # nobody sends: only the heartbeat thread keeps the connection alive
        add.delay(2, 2)
        assert app._sync is not None and app._sync._state.opened == 1, "the idle connection was dropped"
        assert wait_count(channel, unique, 2) == 2
    finally:
        app.close()
