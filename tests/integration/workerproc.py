"""Run a real ``amqptasks worker`` subprocess against a generated app, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika

TOPOLOGY = """\
exchanges:
  {q}.dlx: {{type: direct}}
queues:
  {q}:
    dead_letter: {{exchange: {q}.dlx, routing_key: {q}.dead}}
  {q}.dead:
    bindings: [{{exchange: {q}.dlx, routing_key: {q}.dead}}]
"""


def write_app(directory: Path, module: str, queue: str, body: str) -> Path:
    """A tasks module whose App routes everything to ``queue`` (declared with a dead-letter queue)."""
    topology = directory / f"{module}.yaml"
    topology.write_text(TOPOLOGY.format(q=queue))
    source = f"""\
        import os, time
        from amqptasks import App

        DONE = {str(directory / 'done.txt')!r}
        app = App({module!r}, topology={str(topology)!r})

        def record(line):
            with open(DONE, "a") as f:
                f.write(line + "\\n")
        """
    (directory / f"{module}.py").write_text(textwrap.dedent(source) + textwrap.dedent(body))
    return topology


def done_lines(directory: Path) -> list[str]:
    path = directory / "done.txt"
    return path.read_text().splitlines() if path.exists() else []


class WorkerProcess:
    """``python -m amqptasks worker`` in ``cwd``; its log goes to ``cwd/worker.log``."""

    def __init__(self, cwd: Path, broker_url: str, *args: str) -> None:
        self.cwd = cwd
        self.broker_url = broker_url
        self.exit_code: int | None = None
        self.log_path = cwd / f"worker-{time.monotonic_ns()}.log"
        env = dict(os.environ, AMQPTASKS_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqptasks", "worker", *args],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def consumer_pids(self) -> list[int]:
        """The supervisor's children: its consumer processes."""
        pid = self.process.pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def wait_consuming(self, queue: str, processes: int = 1, timeout: float = 20) -> None:
        """Wait until the broker shows ``processes`` consumers on ``queue`` (whatever the log level)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if queue_counts(self.broker_url, queue)[1] >= processes:
                    return
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"worker did not start consuming in {timeout}s:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """kill -9 of the main process (its consumers die with it)."""
        self.process.send_signal(signal.SIGKILL)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self._log.close()


@contextmanager
def running_worker(cwd: Path, broker_url: str, module: str, queue: str, *args: str) -> Iterator[WorkerProcess]:
    """One worker process of ``module`` consuming ``queue``; SIGTERM and wait on the way out
    (the exit code is then in ``worker.exit_code``; a worker still alive after that is killed)."""
    worker = WorkerProcess(cwd, broker_url, "-A", module, "--queues", queue, "--processes", "1", *args)
    try:
        worker.wait_consuming(queue)
        yield worker
    finally:
        worker.signal(signal.SIGTERM)
        worker.exit_code = worker.wait()
        worker.stop()


def queue_counts(broker_url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue`` via a passive declare."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ok = connection.channel().queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    finally:
        connection.close()


def drain(broker_url: str, queue: str, limit: int = 100_000) -> list[tuple[pika.spec.BasicProperties, bytes]]:
    """Take every message from ``queue`` (acked) and return them."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    messages = []
    try:
        channel = connection.channel()
        while len(messages) < limit:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            messages.append((properties, body))
    finally:
        connection.close()
    return messages


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
