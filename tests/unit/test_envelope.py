"""The wire format (amqptasks.core.envelope) against docs/protocol.md, read with plain json."""

from __future__ import annotations

import json

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
    with pytest.raises(TypeError, match="JSON-serializable"):
        encode_task(TaskMessage(id="i", task="t", args=(object(),)))


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
