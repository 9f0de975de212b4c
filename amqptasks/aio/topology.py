"""Plan and apply a topology with aio-pika: the async twin of :mod:`amqptasks.sync.topology`.

Every decision comes from :mod:`amqptasks.core.plan` and :mod:`amqptasks.core.declare`; this
module only does I/O. The broker serves one channel's methods one at a time, so declares are
spread over up to 16 throwaway aiormq channels ("lanes") run with ``asyncio.gather``; each lane takes the
next step from a shared queue as soon as its previous one is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

import aio_pika.abc
import aiormq
import aiormq.abc
import aiormq.exceptions
from aiormq.channel import EXCEPTION_MAPPING
from yarl import URL

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

__all__ = ["aapply", "aobserve_or_probe", "aplan", "aprovision"]

log = logging.getLogger(__name__)

UNOBSERVED = ObservedState(None, None, None)
#: Give up on one declare the broker has not answered for this long.
DEFAULT_TIMEOUT = 30.0
#: Lanes for probes, where refusals are expected. aiormq (6.9) drops the Channel.Close-Ok it owes
#: the broker when the connection's 10-frame write queue is full at that moment; the broker then
#: kills the connection on the next channel.open of that number. With 16 lanes that happened
#: within 1,000 probes; with 4 it did not, and 4 probe as fast (channel churn is the bottleneck).
PROBE_LANES = 4


async def aobserve_or_probe(
    connection: aio_pika.abc.AbstractConnection,
    topology: Topology,
    *,
    observed: ObservedState | None = None,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Plan:
    """The plan for ``topology`` against the broker behind ``connection``: ``observed`` (else the
    management API, read in a thread) diffed first, the rest settled by declare probes on
    throwaway channels, which never create anything."""
    if observed is None:
        endpoint = management_endpoint(connection, management_url)
        if endpoint is not None:
            observed = await asyncio.to_thread(observe_endpoint, endpoint)
    draft = plan_topology(topology, observed or UNOBSERVED)
    passive = await _run_steps(connection, passive_probes(draft), refusals_expected=True, timeout=timeout)
    active = await _run_steps(connection, active_probes(draft, passive), refusals_expected=True, timeout=timeout)
    return settle(draft, passive, active)


async def aplan(
    connection: aio_pika.abc.AbstractConnection,
    topology: Topology,
    *,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Plan:
    """What applying ``topology`` would do, per entity (see :func:`amqptasks.sync.topology.plan`)."""
    return await aobserve_or_probe(connection, topology, management_url=management_url, timeout=timeout)


async def aapply(
    connection: aio_pika.abc.AbstractConnection,
    topology: Topology,
    *,
    observed: ObservedState | None = None,
    management_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ApplyResult:
    """Declare what ``topology`` has and the broker lacks: exchanges, then queues, then bindings.

    Raises :class:`TopologyConflict` (the rendered plan) before declaring anything on a conflict.
    Channels are opened on ``connection`` and closed again; the caller's channels are untouched.
    """
    settled = await aobserve_or_probe(connection, topology, observed=observed,
                                      management_url=management_url, timeout=timeout)
    if settled.conflicts:
        raise TopologyConflict(conflict_report(settled))
    declared: list[EntityPlan] = []
    for phase in creation_phases(settled):
        await _run_steps(connection, phase, refusals_expected=False, timeout=timeout)
        declared.extend(step.entry for step in phase)
    return ApplyResult(settled, tuple(declared))


async def aprovision(
    connection: aio_pika.abc.AbstractConnection, topology: Topology, *, management_url: str | None = None
) -> None:
    """Make sure ``topology`` exists before producing or consuming: create what is missing, raise
    :class:`TopologyConflict` on a conflict. Cheap when nothing changed: three management API GETs
    (in a thread) and no AMQP traffic (without the API: pipelined declare probes)."""
    result = await aapply(connection, topology, management_url=management_url)
    if result.changed:
        log.info("provisioned topology: %s", result.render().splitlines()[-1])
    else:
        log.debug("topology already provisioned")


def management_endpoint(
    connection: aio_pika.abc.AbstractConnection, management_url: str | None = None
) -> ManagementEndpoint | None:
    """The management API of the broker and vhost ``connection`` is connected to, with its user."""
    return ManagementEndpoint.from_amqp_url(str(_url(connection)), management_url)


# --- pipelined execution ---------------------------------------------------------------------


async def _run_steps(
    connection: aio_pika.abc.AbstractConnection,
    steps: Sequence[Step],
    *,
    refusals_expected: bool,
    timeout: float,
) -> dict[EntityKey, ProbeOutcome]:
    """Run independent ``steps`` over several channels and return each step's answer.

    With ``refusals_expected`` (probes) a refused step costs its channel and the lane carries on
    on a fresh one. Otherwise the first refusal raises :class:`TopologyConflict`.
    """
    if not steps:
        return {}
    pending = deque(steps)
    outcomes: dict[EntityKey, ProbeOutcome] = {}
    try:
        numbers = _ChannelNumbers(_amqp(connection))
    except ConnectionError as exc:
        raise BrokerUnavailable(_lost(connection, exc)) from None
    width = lane_count(len(steps), PROBE_LANES) if refusals_expected else lane_count(len(steps))
    lanes = [_lane(connection, numbers, pending, outcomes, refusals_expected, timeout) for _ in range(width)]
    # return_exceptions: every lane finishes (a failing lane empties the queue for the others), so
    # no lane's error is left unretrieved; the most telling one is raised below.
    results = await asyncio.gather(*lanes, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        _raise_first(errors, connection, timeout)
    return outcomes


def _raise_first(errors: list[BaseException], connection: aio_pika.abc.AbstractConnection, timeout: float) -> None:
    for error in errors:
        if isinstance(error, TopologyConflict | asyncio.CancelledError):
            raise error
    for error in errors:
        if isinstance(error, TimeoutError):
            raise AmqpTasksError(
                f"the broker did not answer a declare within {timeout:.0f}s; is it overloaded or blocked "
                "(memory/disk alarm)? Check `rabbitmqctl status`"
            ) from None
    for error in errors:
        if isinstance(error, aiormq.exceptions.AMQPConnectionError | ConnectionError | RuntimeError):
            raise BrokerUnavailable(_lost(connection, error)) from None
    raise errors[0]


async def _lane(
    connection: aio_pika.abc.AbstractConnection,
    numbers: _ChannelNumbers,
    pending: deque[Step],
    outcomes: dict[EntityKey, ProbeOutcome],
    refusals_expected: bool,
    timeout: float,
) -> None:
    try:
        channel = await _open(connection, numbers, timeout)
    except BaseException:
        pending.clear()  # the other lanes stop too
        raise
    try:
        while pending:
            step = pending.popleft()
            try:
                await getattr(channel, step.method)(**step.kwargs, timeout=timeout)
            except aiormq.exceptions.ChannelClosed as exc:
                outcome = _outcome(exc)
                outcomes[step.key] = outcome
                if not refusals_expected:
                    raise TopologyConflict(
                        f"the broker refused to declare {step.entry.kind} {step.entry.name!r}: "
                        f"{outcome.reply_code} {outcome.reply_text}. It changed since the plan was made "
                        "(another client?); run `amqptasks topology plan` to see the difference. "
                        "Entities declared before this one remain."
                    ) from None
                channel = await _open(connection, numbers, timeout)  # the refusal closed the old channel
            else:
                outcomes[step.key] = ProbeOutcome()
    except BaseException:
        pending.clear()  # the other lanes stop too
        raise
    finally:
        await _close(channel)


class _ChannelNumbers:
    """Hands out channel numbers for one run, none twice until the range wraps around.

    aiormq's own allocator would hand a refused channel's number straight out again; should the
    Close-Ok for it have been lost (see PROBE_LANES), that reuse makes the broker close the whole
    connection ("CHANNEL_ERROR - second 'channel.open' seen"). Fresh numbers keep a run clear of it.
    """

    def __init__(self, amqp: aiormq.abc.AbstractConnection) -> None:
        self._amqp = amqp
        tune = getattr(amqp, "connection_tune", None)
        self._limit = int(getattr(tune, "channel_max", 0) or 65535)
        self._next = max(amqp.channels, default=0) % self._limit + 1

    def take(self) -> int:
        for _ in range(self._limit):
            number, self._next = self._next, self._next % self._limit + 1
            if number not in self._amqp.channels:
                return number
        raise ConnectionError(f"all {self._limit} channels of the connection are in use")


def _amqp(connection: aio_pika.abc.AbstractConnection) -> aiormq.abc.AbstractConnection:
    """The aiormq connection under aio-pika's: bare channels, because aio-pika's robust channels
    would reopen themselves after a refusal."""
    transport = connection.transport
    if transport is None:
        raise ConnectionError("the connection is closed")
    amqp: aiormq.abc.AbstractConnection = transport.connection
    return amqp


async def _open(
    connection: aio_pika.abc.AbstractConnection, numbers: _ChannelNumbers, timeout: float
) -> aiormq.abc.AbstractChannel:
    # No publisher confirms: declares are synchronous methods already.
    opening = _amqp(connection).channel(numbers.take(), publisher_confirms=False)
    return await asyncio.wait_for(opening, timeout=timeout)


async def _close(channel: aiormq.abc.AbstractChannel) -> None:
    if not channel.is_closed:
        try:
            await channel.close()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
            pass  # already gone with its connection; nothing left to release


def closed_reply(exc: aiormq.exceptions.ChannelClosed) -> tuple[int, str]:
    """The reply code and text of a channel closed by the broker (aiormq keeps only the text for
    the codes it has a class for)."""
    for code, exception_class in EXCEPTION_MAPPING.items():
        if type(exc) is exception_class:
            return code, str(exc.args[0]) if exc.args else ""
    if len(exc.args) >= 2 and isinstance(exc.args[0], int):
        return exc.args[0], str(exc.args[1])
    return 500, str(exc)


def _outcome(exc: aiormq.exceptions.ChannelClosed) -> ProbeOutcome:
    return ProbeOutcome(*closed_reply(exc))


def _lost(connection: aio_pika.abc.AbstractConnection, exc: BaseException) -> str:
    url = _url(connection)
    return (f"lost the connection to the broker at {url.host}:{url.port} while declaring the topology "
            f"({type(exc).__name__}); what was declared before remains - run the apply again")


def _url(connection: aio_pika.abc.AbstractConnection) -> URL:
    # aio_pika.Connection (and RobustConnection) keep the URL they connected with; the abstract
    # base class does not declare it.
    url: URL = connection.url  # type: ignore[attr-defined]
    return url
