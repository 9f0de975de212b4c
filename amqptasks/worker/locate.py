"""Finding the user's App: ``-A module[:attr]``, then ``AMQPTASKS_APP``, then pyproject.toml."""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from amqptasks.errors import ConfigurationError

if TYPE_CHECKING:
    from amqptasks.app import App

HOW = (
    "name the app with -A MODULE or -A MODULE:ATTR (as with celery -A tasks), set AMQPTASKS_APP, "
    'or add [tool.amqptasks] app = "MODULE" to pyproject.toml'
)


def app_reference(explicit: str | None, cwd: Path) -> str:
    """The ``module[:attr]`` to load, from the first place that names one."""
    if explicit:
        return explicit
    if os.environ.get("AMQPTASKS_APP"):
        return os.environ["AMQPTASKS_APP"]
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{pyproject}: not valid TOML ({exc}); {HOW}") from None
        name = config.get("tool", {}).get("amqptasks", {}).get("app")
        if isinstance(name, str) and name:
            return name
    raise ConfigurationError(f"no app given: {HOW}")


def load_app(reference: str, cwd: Path) -> App:
    """Import ``module[:attr]`` with ``cwd`` importable and return the App it defines."""
    from amqptasks.app import App

    module_name, _, attr = reference.partition(":")
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0] or exc.name == module_name:
            raise ConfigurationError(f"cannot import {module_name!r} from {cwd}: no such module; {HOW}") from None
        raise
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, App):
            raise ConfigurationError(f"{module_name}:{attr} is not an amqptasks App")
        return app
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    named_app = getattr(module, "app", None)
    if isinstance(named_app, App):
        return named_app
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise ConfigurationError(f"module {module_name!r} defines no amqptasks App; {HOW}")
    raise ConfigurationError(f"module {module_name!r} defines several Apps; name one with -A {module_name}:ATTR")
