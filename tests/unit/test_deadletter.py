import pytest

from amqptasks.core.deadletter import (
    bindings_label,
    dead_letter_target,
    with_implicit_queues,
)
from amqptasks.core.topology import Binding, Exchange, Queue, Topology


def topology() -> Topology:
    return Topology(
        exchanges={"tasks": Exchange("tasks"), "dead": Exchange("dead")},
        queues={
            "celery": Queue("celery", dead_letter_exchange="dead", dead_letter_routing_key="celery.dead"),
            "plain": Queue("plain"),
            "keyless": Queue("keyless", dead_letter_exchange="dead"),
        },
        bindings=(Binding("tasks", "celery", routing_key="celery"),),
    )


def test_queue_with_dead_letter_setting_uses_it() -> None:
    target = dead_letter_target(topology(), "celery")
    assert (target.exchange, target.routing_key, target.declare) == ("dead", "celery.dead", None)


def test_dead_letter_without_routing_key_keeps_the_queue_name() -> None:
    target = dead_letter_target(topology(), "keyless")
    assert (target.exchange, target.routing_key) == ("dead", "keyless")


def test_queue_without_setting_falls_back_to_its_own_dead_queue() -> None:
    target = dead_letter_target(topology(), "plain")
    assert (target.exchange, target.routing_key, target.declare) == ("", "plain.dead", "plain.dead")


def test_implicit_queues_are_durable_and_dead_lettered() -> None:
    extended, added = with_implicit_queues(topology(), ["celery", "emails"])
    assert added == ["emails"]
    emails = extended.queues["emails"]
    assert emails.durable and emails.dead_letter_exchange == "" and emails.dead_letter_routing_key == "emails.dead"
    assert "emails.dead" in extended.queues
    assert dead_letter_target(extended, "emails").declare is None  # declared with the topology now


def test_bindings_label_names_each_route_in() -> None:
    assert bindings_label(topology(), "celery") == "exchange=(default) key=celery, exchange=tasks(direct) key=celery"


def test_a_delayed_message_in_the_unroutable_queue_says_its_destination_was_gone() -> None:
    from amqptasks.core.deadletter import describe_dead_letter, replay_headers

    headers = {"task": "tasks.add", "id": "t1", "delay-to": ["", "lopri"], "eta": 5,
               "x-death": [{"queue": "amqptasks.delay.0.3", "reason": "expired"}], "x-first-death-reason": "expired"}
    info = describe_dead_letter(headers, queue="amqptasks.delay.unroutable")
    assert info.reason.startswith("destination queue 'lopri' did not exist when the delay ended")
    assert info.origin_queue == "lopri"  # where a replay sends it
    exchange = describe_dead_letter({**headers, "delay-to": ["events", "a.b"]}, queue="amqptasks.delay.unroutable")
    assert exchange.reason.startswith("destination exchange 'events' with routing key 'a.b' did not exist")
    # elsewhere (a TTL in the target queue, say) it is the broker's reason, as before
    assert describe_dead_letter(headers, queue="lopri.dead").reason.startswith("expired (")
    assert "delay-to" not in replay_headers(headers) and "eta" not in replay_headers(headers)


def test_a_retry_through_the_cascade_names_its_queue_as_its_destination() -> None:
    from amqptasks.core.envelope import retry_headers

    original = {"task": "t", "id": "i", "delay-to": ["events", "a.b"]}
    assert retry_headers(original, retries=1, due_ms=9, delayed_to_queue="q")["delay-to"] == ["", "q"]
    assert "delay-to" not in retry_headers(original, retries=1, due_ms=9)

# --- why the broker dead-lettered it (amqptasks dlq list) -----------------------------------------


def _death(reason: str, queue: str, when: int = 1_700_000_000) -> dict[str, object]:
    return {"reason": reason, "queue": queue, "count": 1, "exchange": "", "routing-keys": [queue], "time": when}


def test_a_delayed_task_dead_lettered_for_its_delivery_limit_says_delivery_limit() -> None:
    from amqptasks.core.deadletter import describe_dead_letter

    # The delay cascade's levels dead-lettered it first ("expired"); then the task queue, past its
    # delivery limit. x-death lists the latest first; x-first-death-* is the cascade's.
    headers = {
        "id": "t1", "task": "tasks.add",
        "x-death": [_death("delivery_limit", "celery", 1_700_000_100), _death("expired", "amqptasks.delay.0.3")],
        "x-first-death-reason": "expired", "x-first-death-queue": "amqptasks.delay.0.3",
    }
    info = describe_dead_letter(headers)
    assert info.reason == "delivery_limit (delivered more times than the queue's delivery limit without an ack) in queue celery"
    assert info.origin_queue == "celery"
    assert info.dead_at_ms == 1_700_000_100_000


@pytest.mark.parametrize(("reason", "meaning"), [
    ("expired", "its time to live ran out"), ("maxlen", "the queue was full"), ("rejected", "rejected it without requeue"),
])
def test_the_brokers_reasons_are_named_and_explained(reason: str, meaning: str) -> None:
    from amqptasks.core.deadletter import describe_dead_letter

    info = describe_dead_letter({"x-death": [_death(reason, "q")], "x-first-death-reason": reason})
    assert info.reason.startswith(f"{reason} (") and meaning in info.reason and info.reason.endswith("in queue q")


def test_our_reason_wins_over_the_brokers_history() -> None:
    from amqptasks.core.deadletter import describe_dead_letter

    headers = {"x-amqptasks-reason": "task failed", "x-death": [_death("expired", "amqptasks.delay.0.3")]}
    assert describe_dead_letter(headers).reason == "task failed"
