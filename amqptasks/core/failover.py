"""Failover between broker nodes, and the publisher's reconnect-and-republish budget: decided here once.

Every connection amqptasks opens (sync producers, async producers, workers) goes through the same
rules; ``sync/``, ``aio/`` and ``worker/`` only do the I/O.

**Order.** The addresses are tried in the order given, starting with the node in use. When a node
fails (a connect is refused, a connection is lost), the next attempt starts with the node *after*
it, round-robin, and the failed node is tried last: ``a;b;c`` with ``b`` lost tries ``c, a, b``.
A client stays on the node it reached until that node fails (no rebalancing).

**Backoff.** No wait between the nodes of one round: a refused connect costs a millisecond, and
the next node may answer. After a full round in which no node answered, wait
``ROUND_BACKOFF * 2**(round - 1)`` seconds, at most ``MAX_ROUND_BACKOFF`` (0.25, 0.5, 1, 2, 4, 5, 5 ...).

**Republishing.** A send whose connection is lost before its confirm publishes the unconfirmed
messages again on a new connection (so at least once: a lost confirm makes a duplicate), at most
``settings.reconnect_attempts`` times, waiting ``reconnect_delay * attempt`` before each; then it
raises :class:`~amqptasks.errors.BrokerUnavailable` naming the nodes tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from amqptasks.errors import BrokerRefused, BrokerUnavailable

ROUND_BACKOFF = 0.25  # seconds after the first full round of failed nodes
MAX_ROUND_BACKOFF = 5.0  # cap: a node that comes back is found within this long


def round_backoff(failed_rounds: int) -> float:
    """Seconds to wait after ``failed_rounds`` full rounds in a row in which no node answered."""
    if failed_rounds <= 0:
        return 0.0
    return min(MAX_ROUND_BACKOFF, ROUND_BACKOFF * 2.0 ** (failed_rounds - 1))


class NodeRing:
    """The broker addresses of one client (indexes into ``settings.addresses``) and the one in use.

    Not locked: each async producer and worker consumer uses its own on its loop; a sync
    publisher's threads share one without a lock, since its state is a few small integers whose
    races can only change which node is tried first, never hand out an address not configured.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("a NodeRing needs at least one address")
        self.count = count
        self.current = 0  # the node to try first
        self.failed_rounds = 0

    def order(self) -> list[int]:
        """The nodes to try, in order, for the next connect: the current one first."""
        return [(self.current + step) % self.count for step in range(self.count)]

    def connected(self, index: int) -> None:
        """A connection to node ``index`` opened: stay on it."""
        self.current = index
        self.failed_rounds = 0

    def lost(self, index: int) -> None:
        """The connection to node ``index`` was lost (or refused): start with the next one."""
        if index == self.current:
            self.current = (index + 1) % self.count

    def lost_node(self, addresses: Sequence[object], address: object) -> None:
        """:meth:`lost` by address (one no longer configured is ignored)."""
        if address in addresses:
            self.lost(list(addresses).index(address))

    def round_failed(self) -> float:
        """No node answered in a whole round: how long to wait before the next round."""
        self.failed_rounds += 1
        return round_backoff(self.failed_rounds)


@dataclass
class ConnectFailures:
    """What each node's failed connect said, for the error when none answered (sync and aio alike)."""

    tried: list[str] = field(default_factory=list)  # ``host:port (reason)`` per node, in order
    single: str | None = None  # the last full message (the one shown when there is one address)
    refused: bool = False  # a node answered and refused us (credentials, access, TLS)

    def add(self, why_not: str, message: str, refused: bool) -> None:
        self.tried.append(why_not)
        self.single = message
        self.refused |= refused

    def error(self) -> BrokerUnavailable:
        return no_node(self.tried, self.single, self.refused)


def no_node(tried: Sequence[str], single: str | None, refused: bool) -> BrokerUnavailable:
    """The error when no node could be connected: BrokerRefused when a node answered and refused
    (credentials, access, TLS: a setting to fix), else BrokerUnavailable (worth waiting for)."""
    kind = BrokerRefused if refused else BrokerUnavailable
    return kind(unreachable_message(tried, single))


def unreachable_message(tried: Sequence[str], single: str | None) -> str:
    """Why a connect failed on every node. ``tried``: ``host:port (reason)`` per node in the order
    tried; ``single``: the full message when there was only one address (it keeps the advice to start
    the local broker, which is wrong when other nodes exist)."""
    if single is not None and len(tried) == 1:
        return single
    return (
        f"cannot reach any of the {len(tried)} broker nodes (tried {', '.join(tried)}); are the cluster's "
        "nodes running and reachable from here? Check AMQPTASKS_BROKER_URL / --broker"
    )


@dataclass
class Republish:
    """The reconnect-and-republish budget of one send (sync and async publishers alike)."""

    attempts: int  # settings.reconnect_attempts
    delay: float  # settings.reconnect_delay
    attempt: int = 0
    nodes: list[str] = field(default_factory=list)  # host:port of each node the send was on

    def on(self, where: str) -> None:
        """The send is (again) on the node at ``where``."""
        if not self.nodes or self.nodes[-1] != where:
            self.nodes.append(where)

    def next_wait(self, unconfirmed: int, cause: object) -> float:
        """``unconfirmed`` messages still need a connection: the seconds to wait before trying
        again, or BrokerUnavailable once the budget is spent."""
        self.attempt += 1
        if self.attempt > self.attempts:
            where = ", then ".join(self.nodes) or "(no node reached)"
            raise BrokerUnavailable(
                f"lost the connection to the broker at {where} ({cause or 'closed'}); "
                f"{unconfirmed} message(s) unconfirmed after {self.attempt} attempt(s) — "
                "they may or may not have been delivered"
            )
        return self.delay * self.attempt
