"""``amqptasks worker`` errors: the message names the problem, the exit code is the documented one.

The worker hands over from the typer CLI to ``python -m amqptasks.worker`` (exec); these check that
errors raised after the hand-over still read and exit as the CLI documents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _worker(tmp_path: Path, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AMQPTASKS_BROKER_URL=broker_url)
    return subprocess.run(
        [sys.executable, "-m", "amqptasks", "worker", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )


@pytest.mark.timeout(40)
def test_an_unknown_app_module_exits_2_naming_it(tmp_path: Path, broker_url: str) -> None:
    done = _worker(tmp_path, broker_url, "-A", "no_such_tasks_module", "--processes", "1")
    assert done.returncode == 2, done.stderr
    assert "no_such_tasks_module" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(40)
@pytest.mark.parametrize("flag", ["--no-wait", "--burst"])
def test_a_broker_that_does_not_answer_exits_3_naming_host_and_port(tmp_path: Path, broker_url: str, flag: str) -> None:
    (tmp_path / "cli_tasks.py").write_text("from amqptasks import App\napp = App('cli_tasks')\n")
    done = _worker(tmp_path, "amqp://guest:guest@127.0.0.1:1/%2F", "-A", "cli_tasks", "--processes", "1", flag)
    assert done.returncode == 3, done.stderr
    assert "127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(40)
def test_no_node_of_a_list_answers_names_every_node_without_local_advice(tmp_path: Path) -> None:
    (tmp_path / "cli_tasks.py").write_text("from amqptasks import App\napp = App('cli_tasks')\n")
    nodes = "amqp://guest:s3cret@127.0.0.1:1/%2F;amqp://guest:s3cret@127.0.0.1:2/%2F"
    done = _worker(tmp_path, nodes, "-A", "cli_tasks", "--processes", "1", "--no-wait")
    assert done.returncode == 3, done.stderr
    assert "127.0.0.1:1 (ConnectionRefusedError), 127.0.0.1:2 (ConnectionRefusedError)" in done.stderr
    assert "rabbitmq.sh" not in done.stderr and "s3cret" not in done.stderr


@pytest.mark.timeout(40)
def test_bad_options_are_refused_by_the_cli_before_the_hand_over(tmp_path: Path, broker_url: str) -> None:
    done = _worker(tmp_path, broker_url, "-A", "cli_tasks", "--threads", "lots")
    assert done.returncode == 2
    assert "--threads" in done.stderr


@pytest.mark.timeout(60)
def test_celery_order_app_before_the_command_runs_a_worker(tmp_path: Path, broker_url: str, unique: str, cleanup) -> None:  # type: ignore[no-untyped-def]
    """``amqptasks -A tasks worker -l INFO`` as a Celery user types it: a worker that consumes."""
    cleanup.queue(unique)
    (tmp_path / "cli_order_tasks.py").write_text("from amqptasks import App\napp = App('cli_order_tasks')\n")
    env = dict(os.environ, AMQPTASKS_BROKER_URL=broker_url)
    done = subprocess.run(
        [sys.executable, "-m", "amqptasks", "-A", "cli_order_tasks", "worker", "-l", "INFO", "-Q", unique,
         "--processes", "1", "--burst"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cli_order_tasks" in done.stdout + done.stderr  # the banner names the app it loaded


@pytest.mark.timeout(40)
def test_refused_credentials_exit_3_at_once_even_when_waiting(tmp_path: Path, broker_url: str) -> None:
    """Waiting for the broker is for a broker that is not up yet; one that answers and refuses the
    password will not change its mind."""
    (tmp_path / "cli_tasks.py").write_text("from amqptasks import App\napp = App('cli_tasks')\n")
    wrong = broker_url.replace("guest:guest@", "guest:not-the-password@", 1)
    assert wrong != broker_url
    done = _worker(tmp_path, wrong, "-A", "cli_tasks", "--processes", "1")
    assert done.returncode == 3, done.stderr
    assert "refused the credentials" in done.stderr and "waiting for the broker" not in done.stderr
    assert "not-the-password" not in done.stderr
