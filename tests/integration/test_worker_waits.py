"""A worker started before its broker waits for it (issue 15 item 6): a log line per attempt, then it
connects, says which node, says it is ready, and says when it stopped (issue 15 item 4)."""

from __future__ import annotations

import re
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.workerproc import WorkerProcess, wait_for, write_app


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LateProxy:
    """A TCP port that refuses connections until :meth:`open`, then forwards them to the broker."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_tcp_port()
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.timeout(90)
def test_worker_started_before_the_broker_waits_then_connects(tmp_path: Path, broker_url: str, unique: str, cleanup) -> None:  # type: ignore[no-untyped-def]
    cleanup.queue(unique)
    cleanup.queue(f"{unique}.dead")
    cleanup.exchange(f"{unique}.dlx")
    write_app(tmp_path, "late_tasks", unique, "")
    parts = urlsplit(broker_url)
    proxy = LateProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    late_url = broker_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    worker = WorkerProcess(tmp_path, late_url, "-A", "late_tasks", "--queues", unique, "--processes", "1", "--loglevel", "info")
    try:
        # at least two attempts logged while nothing listens, and the worker is still there
        assert wait_for(lambda: worker.log.count("waiting for the broker (attempt") >= 2, timeout=30), worker.log
        assert worker.process.poll() is None, worker.log
        proxy.open()
        worker.wait_consuming(unique, timeout=40)
        assert wait_for(lambda: "Worker-1 ready: consuming from" in worker.log, timeout=10), worker.log
        log = worker.log
        attempts = [int(n) for n in re.findall(r"waiting for the broker \(attempt (\d+)\)", log)]
        assert attempts == list(range(1, len(attempts) + 1)), log
        assert f"cannot reach the broker at 127.0.0.1:{proxy.port} (ConnectionRefusedError)" in log
        assert f"connected to the broker node at 127.0.0.1:{proxy.port} (RabbitMQ" in log
        assert f"after {len(attempts) + 1} attempts" in log
        assert f"Worker-1 connected to the broker node at 127.0.0.1:{proxy.port}" in log
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.log
        log = worker.log
        assert "Worker-1 stopped" in log and "worker stopped (exit code 0)" in log, log
        assert "guest:guest" not in log
    finally:
        worker.stop()
        proxy.close()
