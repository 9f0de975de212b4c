"""What get() raises for a failed task (amqptasks/remote.py): catchable as the remote type when the
caller has that type loaded, always a TaskError, never running code a reply could choose."""

from __future__ import annotations

import json
import sys
import types

import pytest

from amqptasks.errors import ConfigurationError, TaskError, TaskExpired
from amqptasks.remote import ExceptionRebuilder

TB = 'Traceback (most recent call last):\n  File "tasks.py", line 3, in boom\nValueError: boom\n'


def test_a_builtin_type_is_caught_by_its_own_except_and_by_task_error() -> None:
    rebuilder = ExceptionRebuilder()
    error = rebuilder.exception("ValueError", "boom", TB, "id-1", "tasks.boom")
    with pytest.raises(ValueError):
        raise error
    assert isinstance(error, TaskError)
    assert (error.exc_type, error.exc_message, error.traceback, error.task_id, error.task_name) == (
        "ValueError", "boom", TB, "id-1", "tasks.boom"
    )
    assert repr(error) == "ValueError('boom')" and str(error) == "boom"
    assert "tasks.boom[id-1]" in error.__notes__[0] and 'File "tasks.py", line 3' in error.__notes__[0]
    assert type(rebuilder.exception("ValueError", "again", "", "id-2")) is type(error)  # made once, kept


def test_a_class_of_a_loaded_module_is_rebuilt_by_module_and_qualname() -> None:
    error = ExceptionRebuilder().exception("json.decoder.JSONDecodeError", "bad", "", "i")
    assert isinstance(error, json.JSONDecodeError) and isinstance(error, ValueError) and isinstance(error, TaskError)


def test_amqptasks_own_bare_names_are_rebuilt() -> None:
    assert isinstance(ExceptionRebuilder().exception("TaskExpired", "expired", "", "i"), TaskExpired)


class Sneaky(Exception):
    made = 0

    def __init__(self, needed: str, also: int) -> None:  # arguments we do not have; a side effect
        Sneaky.made += 1
        super().__init__(needed, also)


class Hooked(Exception):
    def __init_subclass__(cls, **kwargs: object) -> None:
        raise AssertionError("subclassing ran the caller's code")


def test_no_constructor_and_no_subclass_hook_runs() -> None:
    rebuilder = ExceptionRebuilder()
    error = rebuilder.exception(f"{__name__}.Sneaky", "msg", "", "i")
    assert isinstance(error, Sneaky) and Sneaky.made == 0 and error.args == ("msg",)
    hooked = rebuilder.exception(f"{__name__}.Hooked", "msg", "", "i")
    assert type(hooked) is TaskError


@pytest.mark.parametrize(
    "exc_type",
    [
        "SystemExit",  # must not end the caller
        "KeyboardInterrupt",
        "StopIteration",  # would become RuntimeError in a coroutine
        "ExceptionGroup",
        "no_such_module_amqptasks.Error",  # not loaded: never imported
        "json.JSONDecodeError",  # an alias: the reply names the defining module, this is not that
        "json.loads",  # not an exception class
        "os.path",  # a module
        "__import__('os').system",  # not a dotted name
        "",
    ],
)
def test_anything_else_stays_task_error(exc_type: str) -> None:
    error = ExceptionRebuilder().exception(exc_type, "m", "", "i")
    assert type(error) is TaskError and error.exc_type == exc_type


def test_an_unloaded_module_is_not_imported_and_module_getattr_not_called() -> None:
    calls: list[str] = []
    module = types.ModuleType("amqptasks_test_lazy")
    module.__getattr__ = lambda name: calls.append(name) or ValueError  # type: ignore[method-assign]
    sys.modules[module.__name__] = module
    try:
        assert type(ExceptionRebuilder().exception("amqptasks_test_lazy.Lazy", "m", "", "i")) is TaskError
    finally:
        del sys.modules[module.__name__]
    assert calls == []
    ExceptionRebuilder().exception("amqptasks_never_imported.Error", "m", "", "i")
    assert "amqptasks_never_imported" not in sys.modules


def test_the_settings_turn_it_off_whole_or_per_type() -> None:
    assert type(ExceptionRebuilder(enabled=False).exception("ValueError", "m", "", "i")) is TaskError
    kept = ExceptionRebuilder(not_rebuilt=(n for n in ["KeyError"]))
    assert type(kept.exception("KeyError", "m", "", "i")) is TaskError
    assert isinstance(kept.exception("ValueError", "m", "", "i"), ValueError)
    with pytest.raises(ConfigurationError, match="rebuild_exceptions must be True or False"):
        ExceptionRebuilder(enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not_rebuilt must be a list"):
        ExceptionRebuilder(not_rebuilt="KeyError")


class Outer:
    class Inner(KeyError):
        pass


def test_a_nested_class_by_qualname_and_pickling_gives_a_task_error() -> None:
    import pickle

    error = ExceptionRebuilder().exception(f"{__name__}.Outer.Inner", "deep", "", "i")
    assert isinstance(error, Outer.Inner) and isinstance(error, KeyError) and str(error) == "deep"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is TaskError and again.exc_type == f"{__name__}.Outer.Inner"
