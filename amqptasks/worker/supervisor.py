"""The worker's main process once its consumers run: supervise them, with nothing else loaded.

Start-up (``worker/boot.py``) loads the app, provisions, forks the consumer processes and then
replaces itself with ``python -m amqptasks.worker.supervisor`` (exec: same PID, so the consumers stay
its children). The app, aio-pika and the topology leave this process with the exec; only the
standard library is loaded here. An idle 2-process worker, RSS summed over its processes
(scripts/bench/run.py --scenarios memory): 87.0 MiB when the supervisor kept them (34.7 MiB of it),
65.0 MiB with this one (13 MiB).

Signals: the first SIGTERM/SIGINT asks every process to stop gracefully (running tasks finish
within ``--grace`` and are acked); a second one kills them at once (unacked messages return to the
queue). A process that dies unexpectedly is restarted: forked from here, it loads the app itself.

Consumer processes ignore SIGTERM and SIGINT and take orders only from the supervisor (SIGUSR1:
stop gracefully; SIGKILL: now). A signal sent to the whole process group — Ctrl-C in a terminal,
systemd's default ``KillMode=control-group`` — would otherwise reach each of them twice (directly
and forwarded) and read as "exit at once".

Keep this module's imports to the standard library: a test checks it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("amqptasks.worker")

STOP_SIGNAL = signal.SIGUSR1  # supervisor -> consumer process: stop gracefully
GROUP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the supervisor's to interpret
PR_SET_PDEATHSIG = 1
QUICK_EXIT = 5.0  # a consumer dying sooner than this after its start backs off before the next
BURST_GIVE_UP = 5  # quick exits in a row after which a --burst worker stops instead of retrying
MAX_BACKOFF = 30.0


def configure_logging(level: int, process: str) -> None:
    """Celery-style log lines on stderr, labelled with ``process`` (``MainProcess``, ``Worker-1``)."""
    logging.basicConfig(
        level=level, format=f"[%(asctime)s: %(levelname)s/{process}] %(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("aiormq", "aio_pika", "pika"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def fork_consumer(run: Callable[[], int]) -> int:
    """Fork a process that runs ``run()`` and exits with its result; the child's PID.

    Call it with GROUP_SIGNALS and STOP_SIGNAL blocked (see :func:`block_signals`): the child ignores
    the group signals before it lets them in, and unblocks STOP_SIGNAL once it can handle it.
    """
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # or the child writes its copy of what is buffered too
        if stream is not None:
            stream.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with(parent)
        for signum in GROUP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
        code = run()
    except BaseException:  # whatever it was, say it and exit non-zero
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)


def block_signals() -> None:
    """Hold GROUP_SIGNALS and STOP_SIGNAL pending until someone is ready to handle them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {*GROUP_SIGNALS, STOP_SIGNAL})


def _die_with(parent: int) -> None:
    # A kill -9 of the main process must not leave consumers holding messages.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


class Supervisor:
    """Keeps the consumer processes ``pids`` (index -> PID) running until told to stop.

    ``restart(index)`` forks a replacement for consumer ``index`` and returns its PID. Signals are
    taken synchronously (they stay blocked; the loop collects them with ``sigtimedwait``), so a
    stop never lands halfway through a restart and a replacement is never forked with a handler
    of ours installed.
    """

    def __init__(
        self, pids: dict[int, int], restart: Callable[[int], int], *, grace: float, burst: bool, backoff: float = 0.25
    ) -> None:
        self.pids = dict(pids)
        self.backoff = backoff  # the first pause after a quick exit is twice this; it doubles up to MAX_BACKOFF
        self.restart = restart
        self.grace = grace
        self.burst = burst
        self.stopping = False
        self.failed = False
        self.signals = 0
        now = time.monotonic()
        self.started = dict.fromkeys(self.pids, now)
        self.quick_exits: dict[int, int] = {}  # index -> exits in a row, each within QUICK_EXIT of its start
        self.due: dict[int, float] = {}  # index -> when its restart is due

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: killing worker processes now; unacked messages return to the queue")
            self._send_all(signal.SIGKILL)
            os._exit(1)
        log.info("%s received: stopping gracefully (up to %ss); send again to exit at once", signal.Signals(signum).name, self.grace)
        self._stop()

    def _stop(self) -> None:
        if self.stopping:  # a consumer reads a second STOP_SIGNAL as "exit now"
            return
        self.stopping = True
        self.due.clear()
        self._send_all(STOP_SIGNAL)

    def _send_all(self, signum: int) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Supervise until every consumer has exited after a stop (or drained, in burst); exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)  # blocked since start-up; stays so
        by_pid = {pid: index for index, pid in self.pids.items()}
        while self.pids or self.due:
            received = signal.sigtimedwait(GROUP_SIGNALS, 0.2)
            if received is not None:
                self._on_signal(received.si_signo)
            for pid, code in _reap():
                index = by_pid.pop(pid, None)
                if index is None:
                    continue
                del self.pids[index]
                if self.stopping or (self.burst and code == 0):
                    self.failed |= code != 0
                    continue
                self._schedule_restart(index, code)
            for index, when in list(self.due.items()):
                if time.monotonic() >= when:
                    del self.due[index]
                    pid = self.restart(index)
                    self.pids[index], by_pid[pid] = pid, index
                    self.started[index] = time.monotonic()
        code = 1 if self.failed else 0
        log.info("worker stopped (exit code %d)", code)
        return code

    def _schedule_restart(self, index: int, code: int) -> None:
        lived = time.monotonic() - self.started.get(index, 0.0)
        quick = self.quick_exits[index] = self.quick_exits.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        if self.burst and quick >= BURST_GIVE_UP:
            # A burst run (cron, CI) must end: a consumer that cannot even start will not drain.
            log.error("Worker-%d exited %d times in a row right after its start (exit code %s); giving up", index, quick, code)
            self.failed = True
            self._stop()
            return
        wait = min(self.backoff * 2**quick, MAX_BACKOFF) if quick else 0.0
        log.error(
            "Worker-%d exited unexpectedly (exit code %s); restarting it%s",
            index, code, f" in {wait:.1f}s (it exited {lived:.1f}s after its start)" if wait else "",
        )  # fmt: skip
        self.due[index] = time.monotonic() + wait


def _reap() -> list[tuple[int, int]]:
    """(pid, exit code) of every child that has exited; a signal's death is its negative number."""
    exited: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, os.waitstatus_to_exitcode(status)))


def main(argv: list[str]) -> int:
    """``python -m amqptasks.worker.supervisor STATE_JSON``, exec'd by start-up (worker/boot.py)."""
    try:
        state: dict[str, Any] = json.loads(argv[1])
        pids = {int(index): int(pid) for index, pid in state["pids"].items()}
        options = state["options"]
        grace, burst, level = float(options["grace"]), bool(options["burst"]), int(state["loglevel"])
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        print("amqptasks.worker.supervisor is started by `amqptasks worker`, not by hand", file=sys.stderr)
        return 2
    configure_logging(level, "MainProcess")

    def restart(index: int) -> int:
        def run() -> int:
            from amqptasks.worker.command import consumer_main

            return consumer_main(options, index)

        return fork_consumer(run)

    return Supervisor(pids, restart, grace=grace, burst=burst).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
