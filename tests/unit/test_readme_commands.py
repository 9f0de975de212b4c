"""Every ``amqptasks ...`` command README.md shows parses as shown (a wrong option is exit 2).

Run with an unreachable broker: a command that gets as far as the broker exits 3, which means its
command line was accepted; the worker's hand-over is replaced by a recorder.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from amqptasks.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("amqptasks ")]


COMMANDS = _commands()


def test_readme_shows_the_commands_and_how_to_get_them() -> None:
    assert len(COMMANDS) >= 8, COMMANDS
    head = README[: README.index("## Quickstart")]
    assert "source .venv/bin/activate" in head and "pip install -e ." in head


@pytest.mark.parametrize("line", COMMANDS)
def test_a_readme_command_is_accepted(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    handed_over: list[dict[str, Any]] = []
    monkeypatch.setattr("amqptasks.worker.command.exec_worker", lambda **options: handed_over.append(options))
    monkeypatch.chdir(ROOT)
    args: list[str] = []
    for word in shlex.split(line)[1:]:
        args += sorted(glob.glob(word)) if "*" in word else [word]
    done = CliRunner().invoke(
        cli, args,
        env={"AMQPTASKS_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F", "AMQPTASKS_MANAGEMENT_URL": "off"},
    )
    assert done.exit_code in (0, 3), f"{line}\n{done.output}"  # 3: got as far as the (unreachable) broker
    if args and "worker" in args:
        assert handed_over, done.output
