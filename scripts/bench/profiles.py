"""Where amqptasks spends its time: py-spy on the worker during a drain, and on the producers.

Writes results/profile-<name>.txt (py-spy's collapsed stacks, for flame graph tools) and
results/profile-summary.md (per profile: the top frames by own time with file:line, and the top
functions by inclusive time). Idle threads are not sampled, so the shares are of busy time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from common import BENCH_DIR, BIN, PYTHON, REPO, TASKS_DIR, BenchError, Worker, wait_depth
from scenarios import Params, Run
from systems import System, worker_command

PYSPY = [str(BIN / "py-spy"), "record", "--format", "raw", "--rate", "250", "--nonblocking"]
OURS = System("at", "amqptasks", "amqptasks")


def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(timeout=5)


def profile_worker(out: Path, params: Params, key: str, count: int, task: str | None = None) -> None:
    """Pre-fill ``count`` tasks, start a 2-process worker under py-spy, stop when all are done.

    ``task``: the task to send instead of the no-op; ``sleepy`` runs the I/O-bound scenario's
    tasks with its worker configuration."""
    run = Run("profile", System("at", "amqptasks", "amqptasks", env={"task": task}) if task else OURS, params)
    try:
        run.client("publish", key, "--count", str(count), "--prefill", timeout=60 + count / 100)
        wait_depth(run.queue, count, timeout=60)
        command, _ = worker_command("amqptasks", run.queue, 2, io=task is not None)
        run.worker = Worker(command, run.env(), params.workdir / f"{run.queue}.log").start()
        spy = subprocess.Popen([*PYSPY, "--subprocesses", "--pid", str(run.worker.pid), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60 + count / 200
            while os.stat(run.done).st_size < count:
                if time.monotonic() > deadline:
                    raise BenchError(f"profiled drain did not finish: {os.stat(run.done).st_size} of {count}")
                run.worker.check()
                time.sleep(0.05)
        finally:
            _stop_spy(spy)
    finally:
        run.close()


def profile_producer(out: Path, params: Params, key: str, count: int, scenario: str = "publish") -> None:
    """Run ``client.py SCENARIO KEY`` under py-spy (for ``rpc``, a 1-process worker answers)."""
    run = Run("profile", OURS, params)
    try:
        if scenario == "rpc":
            run.start_worker(1, rpc=True)
        command = [*PYSPY, "--output", str(out), "--", PYTHON, str(BENCH_DIR / "client.py"), scenario, key,
                   "--count", str(count)]
        subprocess.run(command, env=run.env(), cwd=TASKS_DIR, check=True, timeout=120 + count / 50,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        run.close()


def profile_rpc_worker(out: Path, params: Params, count: int) -> None:
    """A 1-process worker under py-spy while ``count`` sequential ``delay().get()`` round trips run."""
    run = Run("profile", OURS, params)
    try:
        worker = run.start_worker(1, rpc=True)
        spy = subprocess.Popen([*PYSPY, "--subprocesses", "--pid", str(worker.pid), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run.client("rpc", "at_sync", "--count", str(count), timeout=60 + count * 0.05)
        finally:
            _stop_spy(spy)
    finally:
        run.close()


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py:12)``."""
    for marker in ("site-packages/", f"{REPO}/", "lib/python3.11/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return f"{head}({tail.split(marker, 1)[1]}" if marker in tail else frame
    return frame


LIBRARIES = ("amqptasks/", "aiormq/", "aio_pika/", "pamqp/", "pika/", "bench_amqptasks")
SPINE = ("amqptasks/cli.py", "amqptasks/__main__.py", "amqptasks/worker/command.py", "amqptasks/worker/boot.py",
         "amqptasks/worker/supervisor.py")


def summarize(path: Path, top: int = 15) -> str:
    """Markdown: top frames by own time; library functions and amqptasks lines by inclusive time."""
    own: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    lines_: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        mine = {f for f in frames if f.split("(")[-1].startswith(LIBRARIES) and not any(s in f for s in SPINE)}
        for name in {f.rsplit(":", 1)[0] + ")" for f in mine}:  # the function, without the line
            functions[name] += count
        for frame in {f for f in mine if "(amqptasks/" in f}:
            lines_[frame] += count
    out = [f"### {path.stem} ({total} busy samples at 250 Hz)", "", "| own % | frame (file:line) |", "|---:|---|"]
    out += [f"| {100 * n / total:.1f} | `{frame}` |" for frame, n in own.most_common(top)]
    out += ["", "| inclusive % | function in amqptasks / aiormq / pamqp / pika |", "|---:|---|"]
    out += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in functions.most_common(top)]
    out += ["", "| inclusive % | amqptasks line |", "|---:|---|"]
    out += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in lines_.most_common(top)]
    return "\n".join(out) + "\n"


def run_all(results: Path, params: Params) -> None:
    drain = max(params.drain, 20_000)
    jobs = [
        ("profile-worker", lambda out: profile_worker(out, params, "at_batch", drain)),
        ("profile-worker-async-def", lambda out: profile_worker(out, params, "at_async_def", drain)),
        ("profile-worker-io", lambda out: profile_worker(out, params, "at_batch", params.io, task="sleepy")),
        ("profile-producer-sync", lambda out: profile_producer(out, params, "at_sync", 5_000)),
        ("profile-producer-batch", lambda out: profile_producer(out, params, "at_batch", 50_000)),
        ("profile-producer-async", lambda out: profile_producer(out, params, "at_async", 30_000)),
        ("profile-rpc-worker", lambda out: profile_rpc_worker(out, params, 5_000)),
        ("profile-rpc-client", lambda out: profile_producer(out, params, "at_sync", 5_000, scenario="rpc")),
    ]
    sections = ["# amqptasks profiles (py-spy, busy threads only)", ""]
    for name, job in jobs:
        out = results / f"{name}.txt"
        print(f"profiling {name} ...", flush=True)
        try:
            job(out)
            sections.append(summarize(out))
        except (BenchError, subprocess.SubprocessError, OSError) as exc:
            sections.append(f"### {name}\n\nfailed: {exc}\n")
    (results / "profile-summary.md").write_text("\n".join(sections))
    print(f"wrote {results}/profile-summary.md")
