"""A task's exception as the caller can catch it: ``except ValueError:`` around ``get()`` works.

The reply names the exception's type (``ValueError``, ``myapp.errors.PaymentDeclined``) with its
message and the worker's traceback text. :class:`ExceptionRebuilder` turns that into an instance of a
class that derives from **both** the named type and :class:`~amqptasks.errors.TaskError`, so each of
``except ValueError``, ``except myapp.errors.PaymentDeclined`` and ``except TaskError`` (what code
written for earlier releases catches) still works. The class is made once per type and kept. The
instance carries ``exc_type``, ``exc_message``, ``traceback`` (the remote text), ``task_id`` and
``task_name``, and a note (``__notes__``, printed under Python's own traceback) with the remote one.

Why a subclass of both rather than the original type alone: the original type's ``__init__`` may
need arguments we do not have, or do things (connect, log); and ``except TaskError`` must keep
working. What is never done, whatever a reply says:

* no module is imported: only classes of modules the caller has already imported are used (code
  that writes ``except PaymentDeclined`` has imported it), looked up in module dictionaries, so
  no module ``__getattr__`` runs;
* only :class:`Exception` subclasses: a remote ``SystemExit`` or ``KeyboardInterrupt`` must not
  end the caller, so those stay :class:`TaskError`;
* no constructor runs: the instance is made with the nearest built-in base's ``__new__`` and its
  attributes set directly; a class with a custom metaclass or ``__init_subclass__`` (code that
  would run when we subclass it) stays :class:`TaskError`, as does one that cannot be subclassed.

``App(..., rebuild_exceptions=False)`` turns this off (always :class:`TaskError`);
``App(..., not_rebuilt=["myapp.errors.Secret", "KeyError"])`` keeps the named types as
:class:`TaskError` (names as the reply spells them: bare for built-ins).
"""

from __future__ import annotations

import builtins
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from amqptasks import errors
from amqptasks.errors import ConfigurationError, TaskError


def _lookup(exc_type: str) -> type[Exception] | None:
    """The class ``exc_type`` names, if the caller has it loaded; never imports, never runs code."""
    if not exc_type or not all(part.isidentifier() for part in exc_type.split(".")):
        return None
    found: Any
    if "." not in exc_type:  # the worker names built-ins (and amqptasks' own errors) without a module
        found = vars(builtins).get(exc_type) or vars(errors).get(exc_type)
        return found if isinstance(found, type) and issubclass(found, Exception) else None
    parts = exc_type.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest loaded module prefix, then the qualname
        found = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for name in parts[cut:]:
            found = _namespace(found).get(name)
            if found is None:
                break
        if isinstance(found, type) and issubclass(found, Exception):
            qualified = f"{found.__module__}.{found.__qualname__}"
            return found if qualified == exc_type else None  # an alias of another class: not that type
    return None


# StopIteration raised out of get() inside a generator or coroutine would become a RuntimeError;
# exception groups need their sub-exceptions; a TaskError is one already.
NEVER_REBUILT = (StopIteration, StopAsyncIteration, BaseExceptionGroup, TaskError)


def _namespace(owner: object) -> Mapping[str, Any]:
    """A module's or a plain class's own names, read without running any ``__getattr__`` or
    ``__getattribute__`` of theirs; anything else has none (we do not look inside objects)."""
    if isinstance(owner, types.ModuleType):
        namespace = object.__getattribute__(owner, "__dict__")
    elif type(owner) is type:
        namespace = type.__getattribute__(owner, "__dict__")
    else:
        return {}
    return namespace if isinstance(namespace, dict | MappingProxyType) else {}


def _safe_to_subclass(cls: type[Exception]) -> bool:
    """Subclassing runs no code of the caller's: a plain metaclass and no ``__init_subclass__``."""
    if type(cls) is not type or issubclass(cls, NEVER_REBUILT):
        return False
    return not any("__init_subclass__" in vars(k) for k in cls.__mro__ if k is not object)


def _builtin_new(cls: type) -> Any:
    """The ``__new__`` of the nearest built-in base: it stores ``args`` and runs no Python code."""
    for base in cls.__mro__:
        if base.__module__ == "builtins":
            return base.__new__
    raise AssertionError("every exception derives from BaseException")  # pragma: no cover


class ExceptionRebuilder:
    """Turns a task's failure into the exception ``get()`` raises (see the module docstring)."""

    def __init__(self, enabled: bool = True, not_rebuilt: Iterable[str] = ()) -> None:
        if not isinstance(enabled, bool):
            raise ConfigurationError(f"rebuild_exceptions must be True or False, got {enabled!r}")
        names = () if isinstance(not_rebuilt, str) else tuple(not_rebuilt)
        if isinstance(not_rebuilt, str) or not all(isinstance(name, str) for name in names):
            raise ConfigurationError(
                f"not_rebuilt must be a list of exception type names (e.g. ['KeyError', 'myapp.errors.Secret']), got {not_rebuilt!r}"
            )
        self.enabled = enabled
        self.not_rebuilt = frozenset(names)
        self._classes: dict[type[Exception], type[TaskError] | None] = {}
        self._lock = threading.Lock()

    def exception(self, exc_type: str, exc_message: str, traceback: str, task_id: str, task_name: str = "") -> TaskError:
        """The exception for a failed task: of the remote type too, when allowed and possible."""
        hybrid = self._class_for(exc_type) if self.enabled and exc_type not in self.not_rebuilt else None
        error: TaskError | None = None
        if hybrid is not None:
            try:
                error = _builtin_new(hybrid)(hybrid, exc_message)
            except TypeError:  # a built-in base whose __new__ needs more (none known today)
                error = None
        if error is None:
            error = TaskError(exc_type, exc_message, traceback, task_id)
        else:
            error.args = (exc_message,)
            error.exc_type, error.exc_message, error.traceback, error.task_id = exc_type, exc_message, traceback, task_id
        error.task_name = task_name
        where = f"task {task_name}[{task_id}]" if task_name else f"task {task_id}"
        error.add_note(f"raised by {where} on the worker" + (f"; remote traceback:\n{traceback.rstrip()}" if traceback else ""))
        return error

    def _class_for(self, exc_type: str) -> type[TaskError] | None:
        original = _lookup(exc_type)
        if original is None:
            return None
        with self._lock:
            if original not in self._classes:
                self._classes[original] = _hybrid(original)
            return self._classes[original]


def _hybrid(original: type[Exception]) -> type[TaskError] | None:
    if not _safe_to_subclass(original):
        return None
    namespace = {
        "__module__": original.__module__,  # printed as the original type in tracebacks
        "__qualname__": original.__qualname__,
        "__doc__": f"{original.__qualname__} raised by a task (also a TaskError).",
        "__str__": lambda self: self.exc_message,
        "__repr__": lambda self: f"{original.__qualname__}({self.exc_message!r})",
        "__reduce__": lambda self: (TaskError, (self.exc_type, self.exc_message, self.traceback, self.task_id)),
    }
    try:
        return type(original.__name__, (original, TaskError), namespace)
    except TypeError:  # a layout conflict (__slots__, a C type that cannot be a base): TaskError it is
        return None
