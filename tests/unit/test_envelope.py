"""The wire format (amqptasks.core.envelope) against docs/protocol.md, read with plain json."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import uuid

import pytest

from amqptasks.core import envelope
from amqptasks.core.envelope import (
    Outcome,
    PoisonMessage,
    TaskMessage,
    decode_result,
    decode_task,
    encode_result,
    encode_task,
    failure,
    success,
)
from amqptasks.errors import TaskError


def test_task_round_trip() -> None:
    message = TaskMessage(
        id="abc", task="tasks.add", args=(3, 4), kwargs={"z": 1}, retries=2, eta_ms=5, expires_ms=9,
        reply_to=envelope.DIRECT_REPLY_TO, priority=3, extra_headers={"tenant": "x"},
    )
    body, props = encode_task(message, timestamp=1_700_000_000)
    decoded = decode_task(body, props.headers, content_type=props.content_type, reply_to=props.reply_to, priority=props.priority)
    assert decoded == message
    assert props.timestamp == 1_700_000_000 and props.message_id == "abc" and props.correlation_id == "abc"


def test_task_message_as_protocol_md_describes_it() -> None:
    body, props = encode_task(TaskMessage(id="i", task="tasks.add", args=(3, 4), reply_to=envelope.DIRECT_REPLY_TO))
    assert json.loads(body) == {"args": [3, 4], "kwargs": {}}
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert props.headers == {"amqptasks": 1, "task": "tasks.add", "id": "i"}  # retries 0 is the default, omitted
    assert props.reply_to == "amq.rabbitmq.reply-to" and props.correlation_id == "i"


def test_a_message_written_by_another_language_decodes() -> None:
    body = json.dumps({"args": [1], "kwargs": {"b": [1, 2]}}).encode()
    message = decode_task(body, {"task": "tasks.t", "id": "x"}, content_type="application/json")
    assert message.args == (1,) and message.kwargs == {"b": [1, 2]} and message.retries == 0
    assert decode_task(b'{}', {"task": "tasks.t", "id": "x"}).args == ()  # args/kwargs optional


@pytest.mark.parametrize(
    ("body", "headers", "content_type", "reason"),
    [
        (b"{}", {"id": "x"}, None, "missing header 'task'"),
        (b"{}", {"task": "t"}, None, "missing header 'id'"),
        (b"{}", {"task": "t", "id": "x"}, "application/x-python-serialize", "content type"),
        (b"not json", {"task": "t", "id": "x"}, None, "not valid JSON"),
        (b"[1, 2]", {"task": "t", "id": "x"}, None, "must be a JSON object"),
        (b'{"args": {}}', {"task": "t", "id": "x"}, None, '"args" must be a list'),
        (b"{}", {"task": "t", "id": "x", "retries": "2"}, None, "'retries' must be an integer"),
    ],
)
def test_poison_messages_say_why(body: bytes, headers: dict[str, object], content_type: str | None, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        decode_task(body, headers, content_type=content_type)


def test_arguments_must_be_json() -> None:
    with pytest.raises(TypeError, match=r"^t: args\[0\]: object is not JSON; convert it to str, int, float"):
        encode_task(TaskMessage(id="i", task="t", args=(object(),)))


# --- the value rule: strict JSON, one conversion (tuples arrive as lists) ---------------------


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 2


class Name(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


WHEN = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
REFUSED = [
    # (args, kwargs, the error's text after "add: ")
    ((1, {"when": WHEN}), {}, "args[1]['when']: datetime is not JSON; send .isoformat() and parse it in the task"),
    ((float("nan"),), {}, "args[0]: nan is not JSON (JSON has no NaN or Infinity); send None or a string"),
    ((), {"x": [1.0, float("inf")]}, "kwargs['x'][1]: inf is not JSON (JSON has no NaN or Infinity)"),
    ((-float("inf"),), {}, "args[0]: -inf is not JSON"),
    ((uuid.UUID(int=5),), {}, "args[0]: UUID is not JSON; send str(value) and parse it with uuid.UUID in the task"),
    ((WHEN.date(),), {}, "args[0]: date is not JSON; send .isoformat()"),
    ((decimal.Decimal("1.5"),), {}, "args[0]: Decimal is not JSON; send str(value)"),
    ((b"raw",), {}, "args[0]: bytes is not JSON; send text, or base64"),
    (({1, 2},), {}, "args[0]: set is not JSON; send a list (sorted(value))"),
    ((Colour.RED,), {}, "args[0]: Colour member <Colour.RED: 1> is not JSON (an enum); send .value"),
    (([Level.HIGH],), {}, "args[0][0]: Level member <Level.HIGH: 2> is not JSON (an enum)"),
    ((Name("x"),), {}, "args[0]: Name is not JSON (a subclass of str; it would arrive as a plain str); send str(value)"),
    ((collections.OrderedDict(a=1),), {}, "args[0]: OrderedDict is not JSON (a subclass of dict"),
    ((Point(1),), {}, "args[0]: Point is not JSON (a dataclass); send dataclasses.asdict(value)"),
    (({1: "a"},), {}, "args[0]: dict key 1 (int) is not JSON: JSON object keys are strings"),
    (([2**64],), {}, "args[0][0]: int 18446744073709551616 does not fit in 64 bits"),
    ((object(),), {}, "args[0]: object is not JSON; convert it to str, int, float, bool, None, list or dict"),
]


@pytest.mark.parametrize(("args", "kwargs", "text"), REFUSED)
def test_values_json_would_change_are_refused_naming_the_path(args: tuple[object, ...], kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(TypeError) as caught:
        envelope.encode_new_task("i", "add", args, kwargs, reply_to=None, priority=None, eta_ms=None,
                                 expires_ms=None, extra_headers={})
    assert str(caught.value).startswith(f"add: {text}")


def test_tuples_are_the_one_conversion_and_everything_else_round_trips_exactly() -> None:
    args = ((1, 2), [1.5, -0.0, 2**63 - 1, -(2**63)], {"nested": (3, [None, True, "ü"])}, 2**64 - 1, "")
    kwargs = {"k": {"a": [{"b": 1e308}]}}
    body, props = envelope.encode_new_task("i", "add", args, kwargs, reply_to=None, priority=None, eta_ms=None,
                                           expires_ms=None, extra_headers={})
    decoded = decode_task(body, props.headers)
    assert decoded.args == ([1, 2], [1.5, -0.0, 2**63 - 1, -(2**63)], {"nested": [3, [None, True, "ü"]]}, 2**64 - 1, "")
    assert decoded.kwargs == kwargs
    assert json.loads(body) == {"args": list(decoded.args), "kwargs": kwargs}


def test_plain_scalar_arguments_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from amqptasks.core import jsonvalues

    def walked(*_a: object, **_k: object) -> None:
        raise AssertionError("plain scalars need no walk")

    monkeypatch.setattr(jsonvalues, "find_problem", walked)
    assert envelope.encode_body((3, 4.5, "x", None, True), {"k": 1}, "add") == b'{"args":[3,4.5,"x",null,true],"kwargs":{"k":1}}'


def test_containers_of_exact_json_types_are_checked_without_a_python_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    from amqptasks.core import jsonvalues

    walks: list[object] = []
    real = jsonvalues.find_problem

    def counted(value: object, path: str, **kw: bool) -> str | None:
        walks.append(path)
        return real(value, path, **kw)

    monkeypatch.setattr(jsonvalues, "find_problem", counted)
    nested = ([1, 2.5, {"a": [None, "x", (3, 4)]}], list(range(1000)))  # big: the C checks
    envelope.encode_body(nested, {"k": {"n": None}}, "add")
    assert walks == []  # marshal + the NaN-refusing encoder said "nothing converted"
    for hidden in (Level.HIGH, uuid.UUID(int=3), float("nan"), float("-inf"), Name("s"), Colour.RED):
        for padding in ([], list(range(1000))):  # small (walked) and big (C checks first)
            with pytest.raises(TypeError, match=r"^add: args\[0\]\[2\]\['a'\]\[0\]: "):
                envelope.encode_body(([1, 2.5, {"a": [hidden]}], padding), {}, "add")
    assert walks  # those took the walk, to name the path


def test_a_result_json_would_change_fails_the_task_naming_it_and_the_path() -> None:
    from amqptasks.core.jsonvalues import NotJson

    with pytest.raises(NotJson, match=r"^echo: result: nan is not JSON"):
        envelope.checked_success("i", "echo", float("nan"))
    with pytest.raises(NotJson, match=r"^echo: result\['at'\]: datetime is not JSON; send .isoformat\(\)"):
        envelope.checked_success("i", "echo", {"at": WHEN})
    with pytest.raises(NotJson, match=r"^echo: result: UUID is not JSON"):
        envelope.checked_success("i", "echo", uuid.UUID(int=1))
    # an outcome built without the check is checked when encoded: the caller gets an error
    body, _ = encode_result(success("i", float("inf")))
    with pytest.raises(TaskError, match="result: inf is not JSON"):
        decode_result(body).unwrap()
    good = envelope.checked_success("i", "echo", {"v": (1, 2.5)})
    body, _ = encode_result(good)
    assert json.loads(body) == {"id": "i", "status": "SUCCESS", "result": {"v": [1, 2.5]}}
    assert decode_result(body).unwrap() == {"v": [1, 2.5]}


def test_result_success_round_trip_and_json_shape() -> None:
    body, props = encode_result(success("i", {"v": [1, 2]}))
    assert json.loads(body) == {"id": "i", "status": "SUCCESS", "result": {"v": [1, 2]}}
    assert props.correlation_id == "i" and props.delivery_mode == 1
    assert decode_result(body, props.correlation_id) == Outcome("i", "SUCCESS", value={"v": [1, 2]})


def test_result_failure_round_trip_raises_task_error() -> None:
    body, _ = encode_result(failure("i", "ValueError", "boom", "Traceback ..."))
    assert json.loads(body) == {
        "id": "i", "status": "FAILURE", "exc_type": "ValueError", "exc_message": "boom", "traceback": "Traceback ..."}
    with pytest.raises(TaskError) as caught:
        decode_result(body).unwrap()
    assert (caught.value.exc_type, caught.value.exc_message, caught.value.traceback, caught.value.task_id) == (
        "ValueError", "boom", "Traceback ...", "i")


def test_a_result_that_is_not_json_becomes_a_failure_not_silence() -> None:
    body, _ = encode_result(success("i", object()))
    assert json.loads(body)["exc_type"] == "TypeError"
    assert decode_result(b"garbage", "cid").exc_type == "ProtocolError"
    assert decode_result(b"[]", "cid").task_id == "cid"


def test_a_reply_written_by_another_language_decodes() -> None:
    assert decode_result(json.dumps({"status": "SUCCESS", "result": 7}).encode(), "cid").unwrap() == 7


def test_dead_letter_headers_keep_the_original_and_add_why() -> None:
    headers = envelope.dead_letter_headers(
        {"task": "t", "id": "i"}, reason="boom", queue="q", exchange="e", routing_key="k", now_ms=5,
        exc_type="ValueError", exc_message="m", traceback="x" * 10_000,
    )
    assert headers["task"] == "t" and headers["x-original-queue"] == "q" and headers["x-dead-lettered-at"] == 5
    assert headers["x-exception-type"] == "ValueError"
    assert len(headers["x-traceback"].encode()) <= envelope.TRACEBACK_LIMIT


def test_a_negative_retries_header_is_poison() -> None:
    with pytest.raises(PoisonMessage, match="'retries' must be 0 or more, got -5"):
        decode_task(b'{"args": [], "kwargs": {}}', {"task": "t", "id": "i", "retries": -5}, content_type="application/json")
