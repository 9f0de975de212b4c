"""The value rule for task arguments and results: strict JSON, refused at the sender, never changed.

A value is sent when it is made of ``str``, ``int`` (64-bit), finite ``float``, ``bool``, ``None``,
``list``, ``tuple`` and ``dict`` with ``str`` keys, exactly those types. One conversion, documented
in docs/protocol.md: a tuple is sent as a JSON array and arrives as a list. Everything else is
refused with an error naming where it is (``add: args[1]['when']: datetime is not JSON; ...``):
NaN and infinities (JSON has none), datetime, UUID, Decimal, bytes, sets, enums, dataclasses,
subclasses of the JSON types (OrderedDict, an IntEnum, a str subclass) and any other object.

Cost: orjson refuses most of these itself when ``OPT_PASSTHROUGH_*`` keeps it from converting
datetimes, dataclasses and subclasses; what it still converts silently (NaN/inf to ``null``, UUIDs
and enums to their values) is ruled out without a Python-level walk: not looked for at all when
every top-level argument is a plain ``str``/``int``/``bool``/``None``/finite ``float`` (the common
send); a small value (JSON up to ``WALK_BELOW`` bytes) is walked; a bigger one is first checked
by ``marshal`` (exact built-in types only) and, when the JSON has a ``null``, the standard
library's NaN-refusing encoder, both C, and walked (to name the path) only if they find a hint.
``scripts/bench_encode.py`` measures it.
"""

from __future__ import annotations

import enum
import json
import marshal
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_PLAIN = frozenset({str, int, bool, type(None)})  # never need a look once orjson accepted them
_NUMERIC = frozenset({int, float, bool})
_INT64 = (-(2**63), 2**64 - 1)
_NAN_REFUSING = json.JSONEncoder(allow_nan=False, check_circular=False)  # orjson's recursion limit is lower
#: JSON up to this size is checked by walking the value (as cheap as the C checks there, measured
#: with scripts/bench_encode.py); bigger JSON by marshal + the NaN-refusing encoder first.
WALK_BELOW = 512  # orjson's range: signed 64-bit, and unsigned up to 2**64 - 1

_ADVICE = {
    "datetime": "send .isoformat() and parse it in the task",
    "date": "send .isoformat() and parse it in the task",
    "time": "send .isoformat() and parse it in the task",
    "timedelta": "send .total_seconds()",
    "UUID": "send str(value) and parse it with uuid.UUID in the task",
    "Decimal": "send str(value) and parse it with decimal.Decimal in the task",
    "bytes": "send text, or base64.b64encode(value).decode() and decode it in the task",
    "bytearray": "send text, or base64.b64encode(value).decode() and decode it in the task",
    "memoryview": "send text, or base64.b64encode(value).decode() and decode it in the task",
    "set": "send a list (sorted(value))",
    "frozenset": "send a list (sorted(value))",
}


class NotJson(TypeError):
    """A value that the strict JSON rule refuses; the message names its path and the fix."""


def dumps(value: Any, where: str, root: str, *, wrap: Any = None) -> bytes:
    """``value`` as JSON bytes under the rule above, or raise :class:`NotJson` naming ``where``
    (the task) and the path from ``root`` (``result``). ``wrap(value)``, when given, is what is
    encoded instead (a reply object holding the value): one encode, the check on ``value``."""
    payload = value if wrap is None else wrap(value)
    return _dumps(payload, value, where, lambda ints_ok: find_problem(value, root, ints_ok=ints_ok))


def dumps_body(args: Sequence[Any], kwargs: Mapping[str, Any] | None, where: str) -> bytes:
    """A task body ``{"args": [...], "kwargs": {...}}`` under the rule, or raise :class:`NotJson`
    naming ``where`` (the task) and the argument (``args[1]['when']``, ``kwargs['at']``)."""
    kwargs = dict(kwargs) if kwargs else {}
    body = {"args": list(args), "kwargs": kwargs}

    def problem_of(ints_ok: bool) -> str | None:
        return body_problem(args, kwargs, ints_ok=ints_ok)

    try:
        data = orjson.dumps(body, option=OPTIONS)
    except TypeError as exc:
        raise NotJson(f"{where}: {problem_of(False) or f'not JSON-serializable ({exc})'}") from None
    # The common send, plain scalars only, checked inline: function calls are the cost here.
    for item in args:
        kind = type(item)
        if kind is str or kind is int or item is None or kind is bool or (kind is float and item - item == 0.0):
            continue
        break
    else:
        for item in kwargs.values():
            kind = type(item)
            if kind is str or kind is int or item is None or kind is bool or (kind is float and item - item == 0.0):
                continue
            break
        else:
            return data
    return _checked(data, body, where, problem_of)


def _dumps(payload: Any, checked: Any, where: str, problem_of: Callable[[bool], str | None]) -> bytes:
    try:
        body = orjson.dumps(payload, option=OPTIONS)
    except TypeError as exc:
        raise NotJson(f"{where}: {problem_of(False) or f'not JSON-serializable ({exc})'}") from None
    return _checked(body, checked, where, problem_of)


def _checked(body: bytes, checked: Any, where: str, problem_of: Callable[[bool], str | None]) -> bytes:
    """``body`` (orjson's encoding of ``checked``), unless orjson changed something on the way."""
    # Small values are walked at once (a few us); big ones only when C-speed checks find a hint.
    if not _plain_top(checked) and (len(body) <= WALK_BELOW or _maybe_converted(checked, body)):
        problem = problem_of(True)  # orjson took it: only its silent conversions are left to find
        if problem is not None:
            raise NotJson(f"{where}: {problem}")
    return body


def _maybe_converted(value: Any, body: bytes) -> bool:
    """False when orjson cannot have converted anything in ``value`` silently, decided at C speed:
    ``marshal`` takes only the exact built-in types (so no enum, UUID or other object is inside),
    and NaN/inf are written as ``null``, so without a ``null`` there is none; with one, the
    standard library's encoder refuses NaN/inf. True sends the value to the exact walk."""
    try:
        marshal.dumps(value, 2)  # version 2: no reference table, twice as fast as the default here
    except ValueError:
        return True
    if b"null" not in body:
        return False
    try:
        _NAN_REFUSING.encode(value)
    except ValueError:
        return True
    return False


def _plain_top(value: Any) -> bool:
    """True when nothing inside ``value`` can be a silent orjson conversion: every value at the
    top (or one level down in a body's ``args``/``kwargs``) is a plain scalar."""
    if type(value) is dict:
        items: Any = value.values()
        if len(value) == 2 and "args" in value and "kwargs" in value:  # a task body
            args, kwargs = value["args"], value["kwargs"]
            return _plain_scalars(args) and type(kwargs) is dict and _plain_scalars(kwargs.values())
        return _plain_scalars(items)
    return type(value) in _PLAIN or (type(value) is float and math.isfinite(value))


def _plain_scalars(values: Any) -> bool:
    for item in values:
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is float and item - item == 0.0:  # finite (inf - inf and nan - nan are nan)
            continue
        return False
    return True


def find_problem(value: Any, path: str, *, ints_ok: bool = False) -> str | None:
    """``path: what is wrong; the fix`` for the first value the rule refuses, or None.
    ``ints_ok``: orjson already accepted the value, so every int and str in it is fine."""
    kind = type(value)
    if kind in _PLAIN:
        if ints_ok:
            return None
        if kind is int and not _INT64[0] <= value <= _INT64[1]:
            return f"{path}: int {value} does not fit in 64 bits (JSON numbers here are 64-bit); send str(value)"
        if kind is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path}: str is not valid UTF-8 (it has lone surrogates); fix the text"
        return None
    if kind is float:
        if math.isfinite(value):
            return None
        return f"{path}: {value!r} is not JSON (JSON has no NaN or Infinity); send None or a string"
    if kind is list or kind is tuple:
        return _sequence_problem(value, path, ints_ok)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return (f"{path}: dict key {key!r} ({type(key).__name__}) is not JSON: JSON object keys are "
                        "strings; convert the keys with str()")
            problem = find_problem(item, f"{path}[{key!r}]", ints_ok=ints_ok)
            if problem is not None:
                return problem
        return None
    return f"{path}: {_not_json(value)}"


def _sequence_problem(value: Sequence[Any], path: str, ints_ok: bool) -> str | None:
    if ints_ok:
        kinds = set(map(type, value))  # a census: lists of plain scalars need no more
        if kinds <= _PLAIN:
            return None
        if kinds <= _NUMERIC and 0.0 * sum(value) == 0.0:  # all finite (an overflow to inf: one by one)
            return None
    for index, item in enumerate(value):
        if ints_ok and type(item) in _PLAIN:
            continue
        problem = find_problem(item, f"{path}[{index}]", ints_ok=ints_ok)
        if problem is not None:
            return problem
    return None


def _not_json(value: Any) -> str:
    kind = type(value)
    name = kind.__name__
    if isinstance(value, enum.Enum):
        return f"{name} member {value!r} is not JSON (an enum); send .value (or .name) and look it up in the task"
    bases = [b for b in (str, int, float, dict, list, tuple) if isinstance(value, b)]
    if bases:
        base = bases[0].__name__
        return f"{name} is not JSON (a subclass of {base}; it would arrive as a plain {base}); send {base}(value)"
    if hasattr(kind, "__dataclass_fields__"):
        return f"{name} is not JSON (a dataclass); send dataclasses.asdict(value) and rebuild it in the task"
    advice = _ADVICE.get(name, "convert it to str, int, float, bool, None, list or dict")
    return f"{name} is not JSON; {advice}"


def body_problem(args: Sequence[Any], kwargs: Mapping[str, Any], *, ints_ok: bool = False) -> str | None:
    """The first refused value in a task's arguments (``args[1]['when']: ...``), or None."""
    problem = find_problem(list(args), "args", ints_ok=ints_ok)
    return problem if problem is not None else find_problem(dict(kwargs), "kwargs", ints_ok=ints_ok)
