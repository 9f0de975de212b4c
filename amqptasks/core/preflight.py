"""What a producer checks before it publishes to a destination for the first time, and what the
broker's refusal of such a check means. Pure: the sync and async producers ask the same questions
and turn the same answers into the same errors; they only run the checks.

Why check at all: publishing to a missing exchange makes the broker close the publishing channel
(and the reply consumer on it), so an exchange is probed once on a throwaway channel. An undelayed
message is published ``mandatory`` and its ``basic.return`` raises ``UnroutableError``; a delayed
one enters the delay cascade, which always routes, so its destination is checked here instead:

* a **queue** target (exchange ``""``): a passive ``queue.declare`` of the queue; only when it
  exists is its binding to the cascade's final exchange declared (``delays.landing_for``). A
  missing queue raises ``UnroutableError`` at send time, as an undelayed send does;
* an **exchange** target: a passive ``exchange.declare``, then its landing queue. Whether the
  exchange routes the key anywhere cannot be asked without delivering a message (AMQP has no
  dry-run publish), so that stays unchecked (see ``core/delays.py``).

Every answer is cached per connection (a new connection asks again): one or two round trips on a
destination's first delayed send, none afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from amqptasks.core.delays import DELAY_EXCHANGE_PREFIX, LANDING_QUEUE_TYPE, landing_for
from amqptasks.core.routing import Destination, Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import AmqpTasksError, PublishError, UnroutableError

NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class Probe:
    """A passive declare (which never creates anything) of an exchange or a queue."""

    kind: Literal["exchange", "queue"]
    name: str
    delayed: bool = False  # probing a delayed message's destination (changes only the error text)


@dataclass(frozen=True, slots=True)
class Landing:
    """Declare what routes delayed messages from the cascade to ``destination``."""

    destination: Destination
    topology: Topology


Check = Probe | Landing


class Preflight:
    """One connection's knowledge of what exists: exchanges probed, delay destinations routed."""

    def __init__(
        self,
        known_exchanges: Iterable[str],
        *,
        delay_prefix: str = DELAY_EXCHANGE_PREFIX,
        delay_queue_type: str = LANDING_QUEUE_TYPE,
    ) -> None:
        self._exchanges = {"", *known_exchanges}
        self._landings: set[Destination] = set()
        self._prefix = delay_prefix
        self._queue_type = delay_queue_type

    def ready(self, item: Outgoing) -> bool:
        """Nothing to check before publishing ``item`` (the hot path: two set lookups)."""
        return item.destination.exchange in self._exchanges and (item.landing is None or item.landing in self._landings)

    def checks(self, items: Sequence[Outgoing]) -> list[Check]:
        """What to run, in order, before publishing ``items``; each check at most once."""
        exchanges, landings = self._exchanges, self._landings
        for item in items:  # the hot path: everything known, nothing allocated
            if item.destination.exchange not in exchanges or (item.landing is not None and item.landing not in landings):
                break
        else:
            return []
        out: list[Check] = []
        seen: set[object] = set()

        def add(check: Check, key: object) -> None:
            if key not in seen:
                seen.add(key)
                out.append(check)

        for item in items:
            exchange = item.destination.exchange
            if exchange not in self._exchanges:
                add(Probe("exchange", exchange), ("exchange", exchange))
            target = item.landing
            if target is None or target in self._landings:
                continue
            if target.exchange == "":
                add(Probe("queue", target.routing_key, delayed=True), ("queue", target.routing_key))
            elif target.exchange not in self._exchanges:
                add(Probe("exchange", target.exchange, delayed=True), ("exchange", target.exchange))
            topology = landing_for(target.exchange, target.routing_key, prefix=self._prefix, queue_type=self._queue_type)
            add(Landing(target, topology), target)
        return out

    def passed(self, check: Check) -> None:
        """``check`` succeeded: remember it for this connection."""
        if isinstance(check, Landing):
            self._landings.add(check.destination)
        elif check.kind == "exchange":
            self._exchanges.add(check.name)

    def refused(self, probe: Probe, reply_code: int, reply_text: str, where: str) -> AmqpTasksError:
        """The error a send raises when the broker refused ``probe`` (the channel closed with
        ``reply_code``/``reply_text``); ``where`` names the broker."""
        if reply_code == NOT_FOUND and probe.kind == "queue":
            return UnroutableError(
                "",
                probe.name,
                f"NO_ROUTE: a delayed send, checked when sent: no queue {probe.name!r} on the broker at {where}",
            )
        if reply_code == NOT_FOUND:
            return PublishError(
                f"exchange {probe.name!r} does not exist on the broker at {where}; "
                "declare it in the topology file (exchanges:) or fix the route"
            )
        return PublishError(f"cannot publish to {probe.kind} {probe.name!r}: {reply_code} {reply_text}")
