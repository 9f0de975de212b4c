"""The worker's supervisor stays small: it loads nothing beyond the standard library."""

from __future__ import annotations

import subprocess
import sys


def test_the_supervisor_module_loads_only_the_standard_library() -> None:
    probe = (
        "import sys, amqptasks.worker.supervisor\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] == 'amqptasks')\n"
        "heavy = sorted(m for m in ('asyncio', 'ssl', 'aio_pika', 'aiormq', 'pika', 'orjson', 'yaml') if m in sys.modules)\n"
        "print(ours, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() == "['amqptasks', 'amqptasks.worker', 'amqptasks.worker.supervisor'] []", out


def test_the_package_loads_its_public_names_on_first_use() -> None:
    probe = "import sys, amqptasks\nprint('amqptasks.app' in sys.modules)\nfrom amqptasks import App, TaskError\nprint(App.__module__, TaskError.__module__)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["False", "amqptasks.app", "amqptasks.errors"], out
