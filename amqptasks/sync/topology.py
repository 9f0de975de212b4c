"""Plan and apply a topology with pika: observe, probe what cannot be observed, refuse on
conflict, then declare exchanges, queues and bindings.

Every decision comes from :mod:`amqptasks.core.plan` and :mod:`amqptasks.core.declare`; this
module only does I/O. Declares are pipelined: a ``BlockingChannel`` waits for each ``Declare-Ok``
and the broker serves one channel's methods one at a time, so 1,000 queues take ~4 s that way.
Here the steps are spread over up to 16 channels opened on the asynchronous connection under the
``BlockingConnection`` (``connection._impl``); each channel sends its next step from the callback
of the previous one's Ok while ``process_data_events`` drives the I/O, which brings that to ~1 s.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pika
import pika.channel
import pika.exceptions
from pika.adapters.blocking_connection import BlockingConnection

from amqptasks.core.declare import (
    ApplyResult,
    EntityKey,
    ProbeOutcome,
    Step,
    active_probes,
    conflict_report,
    creation_phases,
    lane_count,
    passive_probes,
    settle,
)
from amqptasks.core.plan import plan_topology
from amqptasks.core.plan_types import EntityPlan, ObservedState, Plan
from amqptasks.core.topology import Topology
from amqptasks.errors import AmqpTasksError, BrokerUnavailable, TopologyConflict
from amqptasks.management import ManagementEndpoint, observe_endpoint
from amqptasks.settings import Settings
from amqptasks.sync._pika_internals import connection_impl, connection_params, process_data_events
from amqptasks.sync.connection import connect

__all__ = ["ApplyResult", "apply", "observe_or_probe", "plan", "provision"]

log = logging.getLogger(__name__)

UNOBSERVED = ObservedState(None, None, None)
#: Give up when the broker answers none of the outstanding declares for this long.
DEFAULT_TIMEOUT = 30.0


def observe_or_probe(
    connection: BlockingConnection,
    topology: Topology,
    *,
    observed: ObservedState | None = None,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Plan:
    """The plan for ``topology`` against the broker behind ``connection``, with nothing unknown
    but bindings to existing ends. ``observed`` (else the management API) is diffed first; what it
    cannot tell is settled with declare probes on throwaway channels, which never create anything.
    """
    if observed is None:
        endpoint = management_endpoint(connection, management_url)
        observed = observe_endpoint(endpoint) if endpoint is not None else None
    draft = plan_topology(topology, observed or UNOBSERVED)
    passive = _run_steps(connection, passive_probes(draft), refusals_expected=True, timeout=timeout)
    active = _run_steps(connection, active_probes(draft, passive), refusals_expected=True, timeout=timeout)
    return settle(draft, passive, active)


def plan(
    target: Settings | BlockingConnection,
    topology: Topology,
    *,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Plan:
    """What applying ``topology`` would do, per entity: create, unchanged, conflict (with the
    differences and the way out) or unknown. ``target`` is a connection, or settings to connect
    with (the connection is closed afterwards). Raises :class:`BrokerUnavailable`."""
    with _connection_for(target, "amqptasks topology plan") as connection:
        return observe_or_probe(connection, topology, management_url=management_url, timeout=timeout)


def apply(
    target: Settings | BlockingConnection,
    topology: Topology,
    *,
    observed: ObservedState | None = None,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ApplyResult:
    """Declare what ``topology`` has and the broker lacks: exchanges, then queues, then bindings.

    Raises :class:`TopologyConflict` (its message is the rendered plan) before declaring anything
    when an entity exists with other settings. Applying the same files twice changes nothing;
    ``result.render()`` then says "No changes".
    """
    with _connection_for(target, "amqptasks topology apply") as connection:
        settled = observe_or_probe(connection, topology, observed=observed,
                                   management_url=management_url, timeout=timeout)
        if settled.conflicts:
            raise TopologyConflict(conflict_report(settled))
        declared: list[EntityPlan] = []
        for phase in creation_phases(settled):
            _run_steps(connection, phase, refusals_expected=False, timeout=timeout)
            declared.extend(step.entry for step in phase)
        return ApplyResult(settled, tuple(declared))


def provision(connection: BlockingConnection, topology: Topology, *, management_url: str | None = None) -> None:
    """Make sure ``topology`` exists before producing or consuming: create what is missing, raise
    :class:`TopologyConflict` on a conflict. Cheap when nothing changed: three management API GETs
    and no AMQP traffic (without the API: pipelined declare probes)."""
    result = apply(connection, topology, management_url=management_url)
    if result.changed:
        log.info("provisioned topology: %s", result.render().splitlines()[-1])
    else:
        log.debug("topology already provisioned")


def management_endpoint(connection: BlockingConnection, management_url: str | None = None) -> ManagementEndpoint | None:
    """The management API of the broker and vhost ``connection`` is connected to, with its user."""
    params = connection_params(connection)  # pika exposes the connection's parameters only on _impl
    credentials = params.credentials
    return ManagementEndpoint.for_broker(
        scheme="amqps" if params.ssl_options is not None else "amqp",
        host=params.host,
        port=params.port,
        vhost=params.virtual_host,
        username=getattr(credentials, "username", "guest"),
        password=getattr(credentials, "password", "guest"),
        management_url=management_url,
    )


@contextmanager
def _connection_for(target: Settings | BlockingConnection, name: str) -> Iterator[BlockingConnection]:
    if not isinstance(target, Settings):
        yield target
        return
    connection = connect(target, name)
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


# --- pipelined execution ---------------------------------------------------------------------


@dataclass
class _Lanes:
    """State of one pipelined run, shared by the pika callbacks of its channels."""

    pending: deque[Step]
    refusals_expected: bool
    outcomes: dict[EntityKey, ProbeOutcome] = field(default_factory=dict)
    in_flight: dict[int, Step] = field(default_factory=dict)
    open_lanes: int = 0
    fatal: BaseException | None = None
    refused: tuple[Step, ProbeOutcome] | None = None


def _run_steps(
    connection: BlockingConnection, steps: Sequence[Step], *, refusals_expected: bool, timeout: float
) -> dict[EntityKey, ProbeOutcome]:
    """Run independent ``steps`` over several channels and return each step's answer.

    With ``refusals_expected`` (probes) a refused step costs its channel, and a fresh channel
    carries on with the rest. Otherwise a refusal stops the run and raises.
    """
    if not steps:
        return {}
    impl = connection_impl(connection)  # the asynchronous connection under BlockingConnection
    lanes = _Lanes(deque(steps), refusals_expected)

    def wake() -> None:
        # Our callbacks run inside the pika ioloop, invisible to process_data_events; a
        # thread-safe callback is the supported way to make it return promptly.
        connection.add_callback_threadsafe(lambda: None)

    def open_lane() -> None:
        lanes.open_lanes += 1
        impl.channel(on_open_callback=on_open)

    def on_open(channel: pika.channel.Channel) -> None:
        channel.add_on_close_callback(on_close)
        feed(channel)

    def feed(channel: pika.channel.Channel) -> None:
        if not lanes.pending or lanes.fatal is not None or lanes.refused is not None:
            channel.close()
            return
        step = lanes.pending.popleft()
        lanes.in_flight[channel.channel_number] = step
        getattr(channel, step.method)(**step.kwargs, callback=functools.partial(on_ok, channel, step))

    def on_ok(channel: pika.channel.Channel, step: Step, _frame: object) -> None:
        lanes.in_flight.pop(channel.channel_number, None)
        lanes.outcomes[step.key] = ProbeOutcome()
        feed(channel)

    def on_close(channel: pika.channel.Channel, reason: Exception) -> None:
        lanes.open_lanes -= 1
        step = lanes.in_flight.pop(channel.channel_number, None)
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker) and step is not None:
            outcome = ProbeOutcome(reason.reply_code, reason.reply_text)
            lanes.outcomes[step.key] = outcome
            if not lanes.refusals_expected:
                lanes.refused = (step, outcome)
            elif lanes.pending and lanes.fatal is None and impl.is_open:
                open_lane()
        elif not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            lanes.fatal = reason
        if lanes.open_lanes == 0:
            wake()

    for _ in range(lane_count(len(steps))):
        open_lane()
    _wait(connection, lanes, timeout)
    if lanes.refused is not None:
        step, outcome = lanes.refused
        raise TopologyConflict(
            f"the broker refused to declare {step.entry.kind} {step.entry.name!r}: {outcome.reply_code} "
            f"{outcome.reply_text}. It changed since the plan was made (another client?); run "
            "`amqptasks topology plan` to see the difference. Entities declared before this one remain."
        )
    return lanes.outcomes


def _wait(connection: BlockingConnection, lanes: _Lanes, timeout: float) -> None:
    """Drive pika's ioloop until every lane has closed, failing on a stall or a lost connection."""
    answered, last_progress = len(lanes.outcomes), time.monotonic()
    try:
        while lanes.open_lanes > 0 and lanes.fatal is None:
            # Returns early when a lane wakes it; the limit only bounds the stall check.
            process_data_events(connection, time_limit=0.25)
            if len(lanes.outcomes) != answered:
                answered, last_progress = len(lanes.outcomes), time.monotonic()
            elif time.monotonic() - last_progress > timeout:
                raise AmqpTasksError(
                    f"the broker answered none of {len(lanes.in_flight)} outstanding declares in {timeout:.0f}s; "
                    "is it overloaded or blocked (memory/disk alarm)? Check `rabbitmqctl status`"
                )
    except pika.exceptions.AMQPConnectionError as exc:
        raise BrokerUnavailable(_lost(connection, exc)) from None
    if lanes.fatal is not None:
        raise BrokerUnavailable(_lost(connection, lanes.fatal))


def _lost(connection: BlockingConnection, exc: BaseException) -> str:
    params = connection_params(connection)
    return (f"lost the connection to the broker at {params.host}:{params.port} while declaring the topology "
            f"({type(exc).__name__}); what was declared before remains - run the apply again")
