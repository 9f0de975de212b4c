"""The worker's supervisor stays small: it loads nothing beyond the standard library."""

from __future__ import annotations

import subprocess
import sys

OURS = {"amqptasks", "amqptasks.worker", "amqptasks.worker.supervisor"}


def _run(probe: str) -> str:
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True).stdout


def test_the_supervisor_module_loads_only_the_standard_library() -> None:
    probe = (
        "import sys\nbefore = set(sys.modules)\nimport amqptasks.worker.supervisor\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names))\n"
    )
    assert _run(probe).strip() == repr(sorted(OURS))


def test_the_package_loads_its_public_names_and_submodules_on_first_use() -> None:
    probe = (
        "import sys, amqptasks\nprint('amqptasks.app' in sys.modules)\nfrom amqptasks import App, TaskError\n"
        "print(App.__module__, TaskError.__module__, amqptasks.errors.__name__, amqptasks.settings.__name__)\n"
    )
    assert _run(probe).split() == ["False", "amqptasks.app", "amqptasks.errors", "amqptasks.errors", "amqptasks.settings"]
