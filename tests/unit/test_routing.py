"""Routing decisions (pure): send options -> task options -> topology routes -> queue ``celery``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from amqptasks.core import envelope
from amqptasks.core.routing import (
    NO_ROUTE,
    Destination,
    RouteSpec,
    match_route,
    outgoing,
    plan_delivery,
    resolve,
)
from amqptasks.core.topology import Route

CORE = Path(__file__).resolve().parents[2] / "amqptasks" / "core"


def test_nothing_given_goes_to_queue_celery_through_the_default_exchange() -> None:
    assert resolve(NO_ROUTE, NO_ROUTE, NO_ROUTE) == Destination("", "celery")


def test_a_queue_is_the_default_exchange_with_the_queue_name_as_key() -> None:
    assert resolve(NO_ROUTE, RouteSpec(queue="emails"), NO_ROUTE) == Destination("", "emails")


def test_send_options_win_over_task_options_and_routes() -> None:
    send = RouteSpec(queue="urgent")
    task = RouteSpec(queue="emails")
    route = RouteSpec(exchange="shop.events", routing_key="emails.send")
    assert resolve(send, task, route) == Destination("", "urgent")


def test_task_options_win_over_routes() -> None:
    route = RouteSpec(exchange="shop.events", routing_key="emails.send")
    assert resolve(NO_ROUTE, RouteSpec(queue="emails"), route) == Destination("", "emails")


def test_a_route_applies_when_nothing_else_says() -> None:
    route = RouteSpec(exchange="shop.events", routing_key="orders.created")
    assert resolve(NO_ROUTE, NO_ROUTE, route) == Destination("shop.events", "orders.created")


def test_a_routing_key_alone_keeps_the_exchange_of_a_lower_level() -> None:
    task = RouteSpec(exchange="shop.events", routing_key="orders.created")
    assert resolve(RouteSpec(routing_key="orders.cancelled"), task, NO_ROUTE) == Destination("shop.events", "orders.cancelled")


def test_a_routing_key_alone_with_no_exchange_anywhere_names_a_queue() -> None:
    assert resolve(RouteSpec(routing_key="celery"), NO_ROUTE, NO_ROUTE) == Destination("", "celery")


def test_an_exchange_alone_routes_with_an_empty_key() -> None:
    assert resolve(RouteSpec(exchange="audit"), NO_ROUTE, NO_ROUTE) == Destination("audit", "")


def test_an_exchange_takes_the_key_of_a_lower_level() -> None:
    assert resolve(RouteSpec(exchange="other"), RouteSpec(exchange="x", routing_key="k"), NO_ROUTE) == Destination("other", "k")


def test_the_default_queue_can_be_changed() -> None:
    assert resolve(NO_ROUTE, NO_ROUTE, NO_ROUTE, default_queue="jobs") == Destination("", "jobs")


def test_routes_match_by_glob_first_match_wins() -> None:
    routes = (
        Route("emails.*", queue="emails"),
        Route("emails.send", queue="never"),
        Route("reports.?", exchange="r", routing_key="k"),
    )
    assert match_route("emails.send", routes) is routes[0]
    assert match_route("reports.x", routes) is routes[2]
    assert match_route("reports.xy", routes) is None
    assert match_route("Emails.send", routes) is None  # case-sensitive on every platform


def test_route_spec_of_a_topology_route() -> None:
    assert RouteSpec.of(Route("a.*", exchange="e", routing_key="k")) == RouteSpec(None, "e", "k")
    assert RouteSpec.of(None) is NO_ROUTE


def test_delivery_now_is_the_destination_itself() -> None:
    destination = Destination("e", "k")
    assert plan_delivery(destination, None, 1000) == (destination, None)
    assert plan_delivery(destination, 1000, 1000) == (destination, None)  # due now (or in the past)


def test_a_future_delivery_enters_the_delay_cascade_and_names_its_landing() -> None:
    from amqptasks.core.delays import decode_routing_key, destination_id, entry_exchange

    destination = Destination("events", "orders.created")
    publish_to, landing = plan_delivery(destination, 3_500, 1_000, "t.delays")
    assert landing == destination
    assert publish_to.exchange == entry_exchange(prefix="t.delays")
    assert decode_routing_key(publish_to.routing_key) == (2_500, destination_id("events", "orders.created"))


def test_outgoing_carries_the_protocol_properties() -> None:
    item = outgoing(
        task_id="id-1", task_name="tasks.add", args=(3, 4), kwargs=None, destination=Destination("", "celery"),
        want_result=True, priority=5, expires_ms=2000, eta_ms=None, headers={"tenant": "a"}, now_ms=1_700_000_000_123,
    )
    props = item.properties
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.message_id == "id-1" and props.correlation_id == "id-1"
    assert props.reply_to == envelope.DIRECT_REPLY_TO and item.wants_result
    assert props.priority == 5 and props.timestamp == 1_700_000_000
    assert props.headers == {"tenant": "a", "amqptasks": 1, "task": "tasks.add", "id": "id-1", "expires": 2000}
    assert item.body == b'{"args":[3,4],"kwargs":{}}'


def test_outgoing_without_result_has_no_reply_to() -> None:
    item = outgoing(
        task_id="id-2", task_name="emails.send", args=(), kwargs={"to": "a@b"}, destination=Destination("", "emails"),
        want_result=False, priority=None, expires_ms=None, eta_ms=None, headers={}, now_ms=0,
    )
    assert item.properties.reply_to is None and item.properties.correlation_id is None
    assert not item.wants_result


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_never_imports_a_broker_client(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            assert name.split(".")[0] not in ("pika", "aio_pika", "aiormq"), f"{path.name} imports {name}"
