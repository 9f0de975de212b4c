"""The worker supervisor's loop with real child processes (no broker): restarts, stops, burst give-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from amqptasks.worker.supervisor import (
    BURST_GIVE_UP,
    GROUP_SIGNALS,
    STOP_SIGNAL,
    Supervisor,
    fork_consumer,
)


@pytest.fixture
def signals_held() -> object:
    """Group signals blocked in this thread (as in the real supervisor) and checked unused after."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    yield
    assert not (signal.sigpending() & GROUP_SIGNALS), "a signal sent by the test was not taken"
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def exiting(code: int) -> int:
    return fork_consumer(lambda: code)


def recording(restarts: list[int], *, exiting_with: int) -> Callable[[int], int]:
    def restart(index: int) -> int:
        restarts.append(index)
        return exiting(exiting_with)

    return restart


def until_stopped() -> int:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {STOP_SIGNAL})  # default action: terminate
    time.sleep(10)
    return 0


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("signals_held")
def test_a_burst_worker_gives_up_on_a_consumer_that_cannot_start() -> None:
    restarts: list[int] = []

    def restart(index: int) -> int:
        restarts.append(index)
        return exiting(1)

    supervisor = Supervisor({1: exiting(1)}, restart, grace=1, burst=True, backoff=0.001)
    assert supervisor.run() == 1
    assert restarts == [1] * (BURST_GIVE_UP - 1)


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("signals_held")
def test_a_stop_while_a_restart_waits_ends_the_supervisor_without_restarting() -> None:
    restarts: list[int] = []
    supervisor = Supervisor({1: exiting(1)}, recording(restarts, exiting_with=0), grace=1, burst=False, backoff=1.0)
    main = threading.get_ident()
    # Thread-directed at the main thread, where it is blocked: the supervisor's loop takes it.
    threading.Timer(0.6, lambda: signal.pthread_kill(main, signal.SIGTERM)).start()
    started = time.monotonic()
    assert supervisor.run() == 0
    assert restarts == [] and supervisor.stopping
    assert time.monotonic() - started < 2.0  # the restart was due after 2 s: it never came


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("signals_held")
def test_a_stop_that_lands_during_a_restart_reaches_the_replacement() -> None:
    main = threading.get_ident()

    def restart(_index: int) -> int:
        signal.pthread_kill(main, signal.SIGTERM)  # arrives while the replacement is being forked
        return fork_consumer(until_stopped)

    supervisor = Supervisor({1: exiting(1)}, restart, grace=1, burst=False, backoff=0.0)
    supervisor.started[1] = time.monotonic() - 60  # ran a while: restarted at once
    started = time.monotonic()
    supervisor.run()
    assert time.monotonic() - started < 5  # the replacement got the stop (it would sleep 10 s)


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("signals_held")
def test_a_consumer_that_ran_a_while_is_restarted_at_once_and_a_clean_burst_exit_is_not() -> None:
    restarts: list[int] = []
    supervisor = Supervisor({1: exiting(3), 2: exiting(0)}, recording(restarts, exiting_with=0), grace=1, burst=True)
    supervisor.started = dict.fromkeys(supervisor.pids, time.monotonic() - 60)  # long-lived before they exit
    assert supervisor.run() == 0
    assert restarts == [1]  # exit code 3: restarted without a pause; worker 2 drained (exit 0): done


def test_output_buffered_before_a_fork_is_written_once() -> None:
    # stdout to a pipe is block-buffered (as under systemd or docker): a fork must not copy the buffer.
    probe = (
        "import os\nfrom amqptasks.worker.supervisor import fork_consumer\n"
        "print('written once')\npid = fork_consumer(lambda: 0)\nos.waitpid(pid, 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True, env=env).stdout
    assert out.count("written once") == 1, out


def test_started_by_hand_it_says_what_starts_it() -> None:
    done = subprocess.run([sys.executable, "-m", "amqptasks.worker.supervisor", "{}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "started by `amqptasks worker`" in done.stderr, done
