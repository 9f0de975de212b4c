"""The command line a Celery user types: --version, ``-A`` before the command, ``-l INFO``, honest help."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.testing import CliRunner

from amqptasks.cli import cli

runner = CliRunner()


@pytest.fixture
def handed_over(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``amqptasks worker`` would hand over to the worker process (instead of exec'ing it)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("amqptasks.worker.command.exec_worker", lambda **options: calls.append(options))
    return calls


def test_version() -> None:
    done = runner.invoke(cli, ["--version"])
    assert done.exit_code == 0, done.output
    assert re.fullmatch(r"amqptasks \S+\n", done.output), done.output


@pytest.mark.parametrize(
    "argv",
    [
        ["-A", "tasks", "worker", "-l", "info"],  # Celery's order
        ["--app", "tasks", "worker", "--loglevel", "INFO"],
        ["worker", "-A", "tasks", "-l", "info"],  # ours, still
        ["-A", "tasks", "worker", "-A", "tasks", "-l", "info"],  # the same twice is fine
    ],
)
def test_app_before_or_after_the_worker_command(argv: list[str], handed_over: list[dict[str, Any]]) -> None:
    done = runner.invoke(cli, argv)
    assert done.exit_code == 0, done.output
    assert handed_over and handed_over[0]["app"] == "tasks"
    assert handed_over[0]["loglevel"].lower() == "info"


def test_two_different_apps_are_refused(handed_over: list[dict[str, Any]]) -> None:
    done = runner.invoke(cli, ["-A", "one", "worker", "-A", "two"])
    assert done.exit_code == 2 and "-A given twice" in done.output and not handed_over


def test_no_app_given_leaves_it_to_the_environment(handed_over: list[dict[str, Any]]) -> None:
    assert runner.invoke(cli, ["worker"]).exit_code == 0
    assert handed_over[0]["app"] is None


HELP_PAGES = [
    [], ["worker"], ["topology"], ["topology", "validate"], ["topology", "plan"], ["topology", "apply"],
    ["topology", "export"], ["dlq"], ["dlq", "list"], ["dlq", "replay"], ["dlq", "purge"],
]


@pytest.mark.parametrize("command", HELP_PAGES, ids=lambda c: " ".join(c) or "top")
def test_help_does_not_contradict_itself(command: list[str]) -> None:
    done = runner.invoke(cli, [*command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    text = done.output
    # One option per line at this width: an option's own "(default: ...)" and typer's "[default: ...]"
    # must not both appear (the old --processes said "(default: CPU count). [default: 0]").
    for line in text.splitlines():
        assert not ("(default:" in line and "[default:" in line), line
    assert "[default: 0]" not in text
    assert "<bool>" not in text  # a flag takes no value
    if command == ["worker"]:
        for option in ("--app", "--queues", "--processes", "--threads", "--prefetch", "--broker", "--topology",
                       "--loglevel", "--grace", "--burst", "--no-inline"):
            assert option in text
        assert "[tool.amqptasks] app" in text  # not eaten as markup
