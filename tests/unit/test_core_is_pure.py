"""amqptasks.core never imports a broker client: the adapters own all I/O."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import amqptasks.core

CLIENTS = ("pika", "aio_pika", "aiormq")
CORE = Path(amqptasks.core.__file__).parent


def core_modules() -> list[str]:
    return sorted(f"amqptasks.core.{m.name}" for m in pkgutil.iter_modules([str(CORE)]))


def test_importing_every_core_module_loads_no_broker_client() -> None:
    modules = core_modules()
    assert "amqptasks.core.loader" in modules and "amqptasks.core.plan" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {CLIENTS!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_core_source_mentions_a_broker_client_import() -> None:
    pattern = re.compile(rf"^\s*(import|from)\s+({'|'.join(CLIENTS)})\b", re.MULTILINE)
    offenders = [str(p) for p in CORE.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
