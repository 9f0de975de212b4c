"""``amqptasks topology ...`` end to end: output, exit codes (0 ok, 1 invalid/conflict, 2 usage,
3 broker unreachable), and that the password never shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from amqptasks.cli import cli
from amqptasks.core.loader import load_topology
from amqptasks.settings import Settings
from amqptasks.sync.topology import plan
from tests.conftest import Broker
from tests.integration.test_management import require_management
from tests.integration.test_topology_apply import register, topology_yaml

SECRET = "pw-never-shown-42"


@pytest.fixture
def management_url(broker_url: str) -> str:
    return require_management(broker_url)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_apply_prints_what_it_declared_then_no_changes(
    runner: CliRunner, tmp_path: Path, broker_url: str, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    path = write(tmp_path, "topology.yaml", topology_yaml(unique))
    # --no-delays: this test is about the file's own entities (the cascade is tested below).
    args = ["topology", "apply", path, "--broker", broker_url, "--management-url", management_url, "--no-delays"]

    planned = runner.invoke(
        cli, ["topology", "plan", path, "--broker", broker_url, "--management-url", management_url, "--no-delays"]
    )
    assert planned.exit_code == 0, planned.output
    assert f"+ queue {unique}.work (classic): create" in planned.stdout

    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert f"created queue {unique}.work (classic)" in first.stdout
    assert f"created exchange {unique}.events (topic)" in first.stdout
    assert "Applied: created 3 exchanges, 3 queues, 4 bindings" in first.stdout

    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert second.stdout.startswith("No changes")
    assert "created" not in second.stdout


def test_plan_and_apply_include_the_delay_cascade_by_default(
    runner: CliRunner, tmp_path: Path, broker_url: str, management_url: str, unique: str, cleanup: Any
) -> None:
    from amqptasks.core.delays import (
        DELAY_EXCHANGE_PREFIX,
        entry_exchange,
        landing_queue,
    )

    register(cleanup, unique)
    path = write(tmp_path, "topology.yaml", topology_yaml(unique))
    broker = ["--broker", broker_url, "--management-url", management_url]
    planned = runner.invoke(cli, ["topology", "plan", path, *broker, "--verbose"])
    assert planned.exit_code == 0, planned.output
    assert f"{DELAY_EXCHANGE_PREFIX}.0.1" in planned.stdout and entry_exchange() in planned.stdout
    # Landing queues are declared by workers and producers when they need one, not per file queue.
    assert landing_queue("", f"{unique}.work") not in planned.stdout
    applied = runner.invoke(cli, ["topology", "apply", path, *broker])
    assert applied.exit_code == 0, applied.output
    again = runner.invoke(cli, ["topology", "apply", path, *broker])
    assert again.stdout.startswith("No changes"), again.stdout


def test_conflict_exits_1_and_declares_nothing(
    runner: CliRunner, tmp_path: Path, broker_url: str, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    original = write(tmp_path, "topology.yaml", topology_yaml(unique))
    changed = write(tmp_path, "changed.yaml", topology_yaml(unique, ttl="2m", extra_queue=True))
    broker = ["--broker", broker_url, "--management-url", management_url]
    assert runner.invoke(cli, ["topology", "apply", original, *broker]).exit_code == 0

    planned = runner.invoke(cli, ["topology", "plan", changed, *broker])
    assert planned.exit_code == 1
    assert "x-message-ttl: expected 120000 (2m), actual 60000 (1m)" in planned.stdout

    applied = runner.invoke(cli, ["topology", "apply", changed, *broker])
    assert applied.exit_code == 1
    assert "CONFLICT" in applied.stderr and "nothing was declared" in applied.stderr
    channel = pika.BlockingConnection(pika.URLParameters(broker_url)).channel()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            channel.queue_declare(f"{unique}.added", passive=True)
    finally:
        channel.connection.close()


def test_validate_prints_every_error_with_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", topology_yaml("t.valid"))
    ok = runner.invoke(cli, ["topology", "validate", good])
    assert ok.exit_code == 0 and ok.stdout.startswith("OK: 3 exchanges, 3 queues, 4 bindings")

    bad = write(tmp_path, "bad.yaml", """\
exchanges:
  t.x:
    type: direct
queues:
  t.q:
    message_ttl: 5 minutes
    colour: blue
    bindings:
      - {exchange: t.missing, routing_key: a}
""")
    result = runner.invoke(cli, ["topology", "validate", bad])
    assert result.exit_code == 1
    errors = result.stderr
    assert f"{bad}:6: queues.t.q.message_ttl: invalid duration" in errors
    assert f'{bad}:7: queues.t.q.colour: unknown key "colour"' in errors
    assert f'{bad}:9: queues.t.q.bindings[0].exchange: binding source exchange "t.missing" is not declared' in errors
    assert "3 errors" in errors

    broken = write(tmp_path, "broken.yaml", "queues:\n  t.r:\n    durable: true\n   bad: [\n")
    syntax = runner.invoke(cli, ["topology", "validate", broken])
    assert syntax.exit_code == 1
    assert f"{broken}:4: YAML syntax error" in syntax.stderr


def test_usage_errors_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", topology_yaml("t.usage"))
    assert runner.invoke(cli, ["topology", "apply"]).exit_code == 2  # no file
    assert runner.invoke(cli, ["topology", "plan", str(tmp_path / "missing.yaml")]).exit_code == 2
    assert runner.invoke(cli, ["topology", "export", path, "--format", "xml"]).exit_code == 2
    assert runner.invoke(cli, ["topology", "apply", path, "--no-such-option"]).exit_code == 2
    bad_url = runner.invoke(cli, ["topology", "plan", path, "--broker", "http://nowhere"])
    assert bad_url.exit_code == 2 and "amqp://" in bad_url.stderr


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_unreachable_broker_exits_3_without_the_password(runner: CliRunner, tmp_path: Path, command: str) -> None:
    path = write(tmp_path, "t.yaml", topology_yaml("t.unreachable"))
    port = closed_port()
    result = runner.invoke(cli, ["topology", command, path, "--broker", f"amqp://guest:{SECRET}@127.0.0.1:{port}/%2F"])
    assert result.exit_code == 3
    assert f"127.0.0.1:{port}" in result.stderr
    assert SECRET not in result.output


def test_python_m_amqptasks_runs_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", topology_yaml("t.module"))
    broker = f"amqp://guest:{SECRET}@127.0.0.1:{closed_port()}/%2F"
    result = subprocess.run([sys.executable, "-m", "amqptasks", "topology", "apply", path, "--broker", broker],
                            check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    assert SECRET not in result.stdout + result.stderr
    env_result = subprocess.run([sys.executable, "-m", "amqptasks", "topology", "plan", path],
                                check=False, capture_output=True, text=True, timeout=30,
                                env={"PATH": "/usr/bin:/bin", "AMQPTASKS_BROKER_URL": broker})
    assert env_result.returncode == 3, env_result.stderr


def test_export_mermaid(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", topology_yaml("t.mermaid"))
    result = runner.invoke(cli, ["topology", "export", path, "--format", "mermaid"])
    assert result.exit_code == 0
    assert result.stdout.startswith("flowchart LR")
    assert "t.mermaid.work" in result.stdout


def test_exported_definitions_import_into_the_broker(
    runner: CliRunner, tmp_path: Path, broker: Broker, broker_url: str, management_url: str, unique: str, cleanup: Any
) -> None:
    register(cleanup, unique)
    path = write(tmp_path, "t.yaml", topology_yaml(unique))
    settings = Settings(broker_url=broker_url)
    result = runner.invoke(cli, ["topology", "export", path, "--format", "definitions",
                                 "--vhost", settings.address.vhost])
    assert result.exit_code == 0, result.output
    definitions = json.loads(result.stdout)
    assert {q["name"] for q in definitions["queues"]} == {f"{unique}.work", f"{unique}.audit.log",
                                                          f"{unique}.dead.letters"}
    exported = tmp_path / "definitions.json"
    exported.write_text(result.stdout, encoding="utf-8")

    _import_definitions(exported, broker)

    # What the broker made of the import is exactly what the files say.
    assert plan(settings, load_topology(path), management_url=management_url).is_noop


def _import_definitions(path: Path, broker: Broker) -> None:
    """``rabbitmqctl import_definitions`` when the local CLI manages the broker under test, else the
    same import through that broker's management API."""
    if broker.ctl_command == ("rabbitmqctl",):
        # rabbitmqctl runs as the rabbitmq user, who cannot read pytest's private tmp_path.
        handle, shared = tempfile.mkstemp(suffix=".json")
        try:
            os.write(handle, path.read_bytes())
            os.close(handle)
            os.chmod(shared, 0o644)
            broker.ctl("import_definitions", shared, timeout=45)
        finally:
            os.unlink(shared)
        return
    broker.api("/api/definitions", method="POST", body=path.read_bytes(), timeout=30)
