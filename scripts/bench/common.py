"""Shared plumbing: broker admin, worker processes, /proc readings, statistics."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BENCH_DIR = Path(__file__).resolve().parent
TASKS_DIR = BENCH_DIR / "tasks"
REPO = BENCH_DIR.parent.parent
RESULTS = REPO / "results"
BIN = Path(sys.executable).parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

TOPOLOGY = """\
exchanges:
  {q}.dlx: {{type: direct}}
queues:
  {q}:
    dead_letter: {{exchange: {q}.dlx, routing_key: {q}.dead}}
  {q}.dead:
    bindings: [{{exchange: {q}.dlx, routing_key: {q}.dead}}]
"""


class BenchError(Exception):
    """One measurement failed (timeout, crash); the suite records it and goes on."""


# --- broker administration ------------------------------------------------------------------------


def _admin() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(URL))


def queue_depth(queue: str, connection: pika.BlockingConnection | None = None) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``; (-1, -1) if it does not exist (yet)."""
    own = connection is None
    connection = connection or _admin()
    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return -1, -1
    finally:
        if channel.is_open:
            channel.close()
        if own and connection.is_open:
            connection.close()


def poll_queue(queue: str, done: Callable[[int, int], bool], timeout: float, what: str,
               check: Callable[[], None] = lambda: None) -> None:
    """Poll ``queue_depth`` on one connection until ``done(ready, consumers)``; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    connection = _admin()
    depth = (-1, -1)
    try:
        while time.monotonic() < deadline:
            check()
            depth = queue_depth(queue, connection)
            if done(*depth):
                return
            time.sleep(0.1)
    finally:
        if connection.is_open:
            connection.close()
    raise BenchError(f"{what} on {queue} after {timeout:.0f}s (ready, consumers = {depth})")


def wait_depth(queue: str, count: int, timeout: float) -> None:
    """Wait until ``queue`` holds ``count`` ready messages (publishers without confirms lag)."""
    poll_queue(queue, lambda ready, _consumers: ready >= count, timeout, f"not {count} messages")


def delete_entities(queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
    """Delete queues and exchanges if they exist (each on a fresh channel: a 404 closes it)."""
    connection = _admin()
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = connection.channel()
                try:
                    if kind == "queue":
                        channel.queue_delete(name)
                    else:
                        channel.exchange_delete(name)
                except pika.exceptions.ChannelClosedByBroker:
                    continue
                if channel.is_open:
                    channel.close()
    finally:
        if connection.is_open:
            connection.close()


# --- /proc readings -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; the name may hold spaces


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of ``pids`` in seconds (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant (by parent pid), plus the members of its process group."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
                groups[int(entry.name)] = int(fields[2])
    tree = {root} if root in parents else set()
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    tree.update(pid for pid, group in groups.items() if group == root)
    return sorted(tree)


def _status_kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kb(pids: Iterable[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in KiB; PSS splits pages shared after fork between processes."""
    pids = list(pids)
    rss = sum(_status_kb(f"/proc/{pid}/status", "VmRSS:") for pid in pids)
    pss = sum(_status_kb(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
    return rss, pss


def broker_pid() -> int | None:
    """The local process listening on the broker URL's port (RabbitMQ's beam.smp), if any."""
    port = urllib.parse.urlsplit(URL).port or 5672
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


# --- processes ------------------------------------------------------------------------------------


def bench_env(**values: Any) -> dict[str, str]:
    """The environment for a worker or client: BENCH_* values, the task modules importable."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_URL=URL, AMQPTASKS_BROKER_URL=URL)
    if os.environ.get("BENCH_MANAGEMENT_URL"):  # a broker on another port has its API elsewhere too
        env["AMQPTASKS_MANAGEMENT_URL"] = os.environ["BENCH_MANAGEMENT_URL"]
    # BENCH_CODE (experiment.py): another checkout of amqptasks, imported instead of this one.
    code = values.pop("code", None) or str(REPO)
    env["PYTHONPATH"] = os.pathsep.join([str(TASKS_DIR), code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for key, value in values.items():
        if value is not None and value is not False:
            env[f"BENCH_{key.upper()}"] = "1" if value is True else str(value)
    return env


def run_client(args: Sequence[str], env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    """Run ``client.py ARGS`` in a fresh interpreter; its last stdout line is a JSON result."""
    command = [PYTHON, str(BENCH_DIR / "client.py"), *args]
    try:
        done = subprocess.run(command, env=env, cwd=TASKS_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"client {' '.join(args)} timed out after {timeout:.0f}s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"client {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-600:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass
class Worker:
    """A worker command in its own session (process group); stopped with SIGTERM then SIGKILL."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=TASKS_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-800:] if self.log_path.exists() else ""
            raise BenchError(f"worker {self.command[:3]} exited early:\n{tail}")

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def wait_consumers(self, queue: str, count: int, timeout: float) -> None:
        poll_queue(queue, lambda _ready, consumers: consumers >= count, timeout, f"not {count} consumer(s)", self.check)

    def stop(self, grace: float = 8.0) -> None:
        if self.process is None:
            return
        members = self.tree()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            break
        for pid in members:  # children that left the group or outlived their parent
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
