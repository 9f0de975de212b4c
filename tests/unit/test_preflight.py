"""What a producer checks before a first publish, and what a refusal means (core/preflight.py):
one decision for the sync and the async producer."""

from __future__ import annotations

from amqptasks.core.delays import landing_for
from amqptasks.core.envelope import Properties
from amqptasks.core.preflight import Landing, Preflight, Probe
from amqptasks.core.routing import Destination, Outgoing
from amqptasks.errors import PublishError, UnroutableError

CASCADE = Destination("amqptasks.delay.8", "0.0.0.0.0.0.0.1.0.abc")


def item(destination: Destination, landing: Destination | None = None) -> Outgoing:
    return Outgoing("id", "t", b"{}", Properties("id", {}), destination, landing)


def test_known_exchanges_and_undelayed_queue_sends_need_nothing() -> None:
    preflight = Preflight(["tasks"])
    for outgoing in (item(Destination("", "celery")), item(Destination("tasks", "k"))):
        assert preflight.ready(outgoing) and preflight.checks([outgoing]) == []


def test_a_delayed_send_to_a_queue_probes_the_queue_then_binds_it_once_per_connection() -> None:
    preflight = Preflight(["amqptasks.delay.8"], delay_prefix="amqptasks.delay", delay_queue_type="classic")
    target = Destination("", "lopri")
    sends = [item(CASCADE, target), item(CASCADE, target)]
    assert not preflight.ready(sends[0])
    checks = preflight.checks(sends)
    assert checks == [Probe("queue", "lopri", delayed=True), Landing(target, landing_for("", "lopri", queue_type="classic"))]
    for check in checks:
        preflight.passed(check)
    assert preflight.ready(sends[0]) and preflight.checks(sends) == []
    # a new connection (a new Preflight) asks again
    assert Preflight(["amqptasks.delay.8"]).checks(sends[:1]) != []


def test_a_delayed_send_to_an_unknown_exchange_probes_it_before_its_landing_queue() -> None:
    preflight = Preflight(["amqptasks.delay.8"])
    target = Destination("events", "a.b")
    checks = preflight.checks([item(CASCADE, target)])
    assert [type(c) for c in checks] == [Probe, Landing] and checks[0] == Probe("exchange", "events", delayed=True)
    preflight.passed(checks[0])
    assert preflight.checks([item(Destination("events", "x"))]) == []  # known now, for undelayed sends too


def test_refusals_mean_the_same_whoever_ran_the_probe() -> None:
    preflight = Preflight([])
    missing_queue = preflight.refused(Probe("queue", "lopri", delayed=True), 404, "NOT_FOUND - no queue 'lopri'", "h:5672")
    assert isinstance(missing_queue, UnroutableError)
    assert (missing_queue.exchange, missing_queue.routing_key) == ("", "lopri") and "h:5672" in str(missing_queue)
    missing_exchange = preflight.refused(Probe("exchange", "events"), 404, "NOT_FOUND", "h:5672")
    assert type(missing_exchange) is PublishError and "exchange 'events' does not exist" in str(missing_exchange)
    locked = preflight.refused(Probe("queue", "q", delayed=True), 405, "RESOURCE_LOCKED - exclusive", "h:5672")
    assert type(locked) is PublishError and str(locked) == "cannot publish to queue 'q': 405 RESOURCE_LOCKED - exclusive"
    denied = preflight.refused(Probe("exchange", "x"), 403, "ACCESS_REFUSED", "h:5672")
    assert type(denied) is PublishError and "403 ACCESS_REFUSED" in str(denied)
