"""One measurement of one system in one scenario. Every wait is bounded; cleanup always runs."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    Worker,
    bench_env,
    broker_pid,
    cpu_seconds,
    delete_entities,
    memory_kb,
    percentile,
    run_client,
    wait_depth,
)
from systems import (
    IO_CEILING,
    IO_PREFILL,
    PREFILL,
    System,
    entities,
    worker_command,
    write_topology,
)

Sample = dict[str, Any]


@dataclass(frozen=True)
class Params:
    """Sizes of one suite run (smaller with --quick, smaller still for the warm-up round)."""

    publish: int
    drain: int
    io: int  # tasks of the I/O-bound scenario (each sleeps 10 ms)
    rpc: int
    delay: int
    delay_low: float
    delay_high: float
    settle: float  # seconds an idle worker runs before its memory is read
    workdir: Path

    def warmup(self) -> Params:
        return Params(max(200, self.publish // 10), max(500, self.drain // 10), max(500, self.io // 10), max(50, self.rpc // 10),
                      max(10, self.delay // 4), self.delay_low, min(self.delay_high, 2.0), 1.0, self.workdir)


class Run:
    """Names, files and cleanup of one measurement: a unique queue per system per run."""

    def __init__(self, scenario: str, system: System, params: Params) -> None:
        self.system = system
        self.params = params
        self.queue = f"bench_{scenario}_{system.key}_{uuid.uuid4().hex[:8]}"
        self.done = params.workdir / f"{self.queue}.done"
        self.done.write_bytes(b"")
        self.topology = write_topology(params.workdir, self.queue)
        self.worker: Worker | None = None

    def env(self, **extra: object) -> dict[str, str]:
        return bench_env(queue=self.queue, done=self.done, topology=self.topology, **self.system.env, **extra)

    def client(self, *args: str, timeout: float) -> dict[str, Any]:
        return run_client(args, self.env(), timeout)

    def start_worker(self, processes: int, rpc: bool = False, ready_timeout: float = 60.0) -> Worker:
        command, consumers = worker_command(self.system.family, self.queue, processes, rpc)
        self.worker = Worker(command, self.env(), self.params.workdir / f"{self.queue}.log").start()
        self.worker.wait_consumers(self.queue, consumers, ready_timeout)
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        queues, exchanges = entities(self.system.family, self.queue)
        try:
            delete_entities(queues, exchanges)
        except Exception as exc:  # a cleanup failure must not hide the measurement's own error
            print(f"cleanup of {self.queue} failed: {exc}")
        for path in (self.done, self.topology):
            path.unlink(missing_ok=True)


def measure(scenario: str, system: System, params: Params) -> Sample:
    run = Run(scenario, system, params)
    try:
        return MEASURES[scenario](run)
    finally:
        run.close()


# --- scenarios ----------------------------------------------------------------------------------------


def publish(run: Run) -> Sample:
    n = run.params.publish
    result = run.client("publish", run.system.key, "--count", str(n), timeout=60 + n / 100)
    return {"rate": result["rate"], "seconds": result["seconds"]}


def drain(run: Run) -> Sample:
    return _drain(run, run.params.drain, PREFILL)


def io(run: Run) -> Sample:
    """The I/O-bound drain: tasks that each wait 10 ms, 64 at once per system."""
    sample = _drain(run, run.params.io, IO_PREFILL, io=True)
    sample["ceiling_pct"] = 100 * sample["rate"] / IO_CEILING
    return sample


def _drain(run: Run, n: int, prefill: dict[str, str], io: bool = False) -> Sample:
    """Pre-fill ``n`` tasks, start a 2-process worker, time the first to the last completion."""
    key = prefill.get(run.system.key, run.system.key)
    run.client("publish", key, "--count", str(n), "--prefill", timeout=60 + n / 100)
    wait_depth(run.queue, n, timeout=60)
    command, _ = worker_command(run.system.family, run.queue, 2, io=io)
    run.worker = worker = Worker(command, run.env(), run.params.workdir / f"{run.queue}.log").start()
    beam = broker_pid()
    deadline = time.monotonic() + 60 + n / 200
    first: tuple[float, int, float, float, list[int]] | None = None
    checked = time.monotonic()
    while time.monotonic() < deadline:
        size = os.stat(run.done).st_size
        now = time.perf_counter()
        if first is None and size > 0:
            tree = worker.tree()
            first = (now, size, cpu_seconds([beam] if beam else []), cpu_seconds(tree), tree)
        if first is not None and size >= n:
            start, start_size, beam_cpu, worker_cpu, tree = first
            elapsed = max(now - start, 1e-6)
            tasks = max(size - start_size, 1)
            broker_used = cpu_seconds([beam]) - beam_cpu if beam else None
            worker_used = cpu_seconds(tree) - worker_cpu
            return {
                "rate": tasks / elapsed,
                "seconds": elapsed,
                "broker_cpu_pct": 100 * broker_used / elapsed if broker_used is not None else None,
                "worker_cpu_pct": 100 * worker_used / elapsed,
                "broker_us_per_task": 1e6 * broker_used / tasks if broker_used is not None else None,
                "worker_us_per_task": 1e6 * worker_used / tasks,
            }
        if time.monotonic() - checked > 0.5:
            worker.check()
            checked = time.monotonic()
        time.sleep(0.005)
    raise BenchError(f"{os.stat(run.done).st_size} of {n} tasks done before the timeout")


def rpc(run: Run) -> Sample:
    n = run.params.rpc
    run.start_worker(1, rpc=True)
    result = run.client("rpc", run.system.key, "--count", str(n), timeout=60 + n * 0.05)
    latencies = result["latencies_ms"]
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies),
    }


def memory(run: Run) -> Sample:
    worker = run.start_worker(2)
    time.sleep(run.params.settle)
    worker.check()
    tree = worker.tree()
    rss, pss = memory_kb(tree)
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": len(tree)}


def delay(run: Run) -> Sample:
    p = run.params
    run.start_worker(1)
    result = run.client("delay", run.system.key, "--count", str(p.delay), "--low", str(p.delay_low),
                        "--high", str(p.delay_high), timeout=60 + p.delay * 0.05)
    if "skipped" in result:
        return {"skipped": result["skipped"]}
    deadline = time.monotonic() + p.delay_high + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = run.done.read_text().splitlines()
        if len(lines) >= p.delay:
            break
        time.sleep(0.05)
    else:
        raise BenchError(f"{len(lines)} of {p.delay} delayed tasks ran before the timeout")
    late = [float(line) * 1000 for line in lines]
    return {
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late),
        "early": sum(1 for v in late if v < 0),
    }


MEASURES = {"publish": publish, "drain": drain, "io": io, "rpc": rpc, "memory": memory, "delay": delay}

# The figure each scenario is judged by, and whether more of it is better.
METRIC: dict[str, tuple[str, str, bool]] = {
    "publish": ("rate", "msg/s", True),
    "drain": ("rate", "tasks/s", True),
    "io": ("rate", "tasks/s", True),
    "rpc": ("p50_ms", "ms p50", False),
    "memory": ("rss_mb", "MiB RSS", False),
    "delay": ("p50_ms", "ms late p50", False),
}
