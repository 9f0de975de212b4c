"""The sync publisher: a pool of producers (``sync/producer.py``), thread- and fork-safe, with reconnects.

Design:

* A **pool of producers**, each one connection + one channel + its lock. pika's BlockingConnection
  is not thread-safe; a thread takes an idle producer for the length of one publish, so N threads
  publishing at once use N connections, and a thread pool never grows connections past its size.
* **Reconnects and failover**: a connection lost during a send is replaced — on the next broker
  node that answers when several are configured — and the unconfirmed messages are published again,
  within the budget and in the node order of ``core/failover.py`` (the same rules as the async
  publisher). A message whose confirm was lost with the connection may therefore arrive twice —
  delivery is at-least-once; tasks should be idempotent (docs/protocol.md).
* **Fork safety** (gunicorn ``--preload``): producers belong to the pid that opened them. A child
  drops the inherited pool without closing anything over the wire — closing would also tear down
  the parent's socket state (the epoll set is shared across fork) — and opens its own.
* **Heartbeats**: an idle BlockingConnection answers heartbeats only while pumped, so a daemon
  thread pumps idle producers every heartbeat/3 s; otherwise the broker would drop them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from amqptasks.core.failover import NodeRing, Republish
from amqptasks.core.routing import Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import AmqpTasksError, BrokerUnavailable, PublishError
from amqptasks.settings import Settings
from amqptasks.sync.producer import IDLE_CHECK_AFTER, Flight, Producer
from amqptasks.sync.results import Broken, Replies

log = logging.getLogger("amqptasks.publisher")


class _PoolState:
    """The producers of one process; replaced wholesale in a forked child."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[Producer] = []
        self.all: list[Producer] = []
        self.opened = 0
        self.stop = threading.Event()
        self.keeper: threading.Thread | None = None


class SyncPublisher:
    """Producers of one App: thread-safe, fork-safe publishing with confirms and reconnects."""

    def __init__(self, settings: Settings, topology: Callable[[], Topology], main: str) -> None:
        self.settings = settings
        self._topology = topology
        self._main = main
        self._state = _PoolState()
        self._inherited: list[_PoolState] = []  # parent's producers in a child: kept, never closed
        self._closed = False
        self._ring = NodeRing(len(settings.addresses))  # which node new producers try first
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            publisher = ref()
            if publisher is not None:
                publisher._current()

        os.register_at_fork(after_in_child=after_fork_in_child)

    def _current(self) -> _PoolState:
        state = self._state
        if state.pid != os.getpid():
            self._inherited.append(state)
            state = self._state = _PoolState()
        return state

    # --- pool -------------------------------------------------------------------------------------

    def _take_idle(self, state: _PoolState) -> tuple[Producer | None, Broken | None]:
        """An idle producer that still works, and the failure of any found dead on the way."""
        dead: Broken | None = None
        while True:
            with state.lock:
                producer = state.idle.pop() if state.idle else None
            if producer is None:
                return None, dead
            if time.monotonic() - producer.last_used > IDLE_CHECK_AFTER:
                producer.try_pump_once()  # notice a connection closed while idle before using it
            if producer.broken is None:
                return producer, dead
            dead = dead or producer.broken
            self._discard(state, producer)

    def _open(self, state: _PoolState) -> Producer:
        with state.lock:
            state.opened += 1
            number = state.opened
        producer = Producer(self.settings, self._topology(), f"amqptasks producer {self._main} pid={state.pid} #{number}", self._ring)
        if self._ring.count > 1:  # which node of several: one line per connection opened
            log.info("producer #%d connected to the broker node at %s", number, producer.address.where)
        with state.lock:
            state.all.append(producer)
            if state.keeper is None:
                state.keeper = threading.Thread(
                    target=_keep_alive, args=(weakref.ref(self), state, max(1.0, self.settings.heartbeat / 3)),
                    name=f"amqptasks-heartbeat-{self._main}", daemon=True,
                )
                state.keeper.start()
        return producer

    def _checkin(self, state: _PoolState, producer: Producer) -> None:
        if producer.broken is not None:
            self._discard(state, producer)
            return
        with state.lock:
            if state is self._state and not self._closed:
                state.idle.append(producer)
                return
        producer.close()

    def _discard(self, state: _PoolState, producer: Producer) -> None:
        if producer.broken is not None:  # lost with its node: new producers start with the next node
            self._ring.lost_node(self.settings.addresses, producer.address)
        with state.lock:
            if producer in state.all:
                state.all.remove(producer)
            if producer in state.idle:
                state.idle.remove(producer)
        producer.close()

    # --- sending ----------------------------------------------------------------------------------

    def publish(self, items: Sequence[Outgoing]) -> list[Replies | None]:
        """Publish ``items`` with confirms; per item, the reply source of the channel it went out on.

        Raises the first UnroutableError/PublishError after all were tried, PublishTimeout, or
        BrokerUnavailable (not reachable, or lost and not regained within the retry budget).
        """
        if self._closed:
            raise AmqpTasksError("this publisher was closed (app.close()); create a new App to send")
        count = len(items)
        owners: list[Replies | None] = [None] * count
        errors: list[BaseException | None] = [None] * count
        todo = list(range(count))
        lost: Broken | None = None
        budget: Republish | None = None  # made on the first loss only: the common send needs none
        node = None
        while todo:
            state = self._current()
            # After a loss, open a fresh connection: idle ones may have died with the same broker.
            producer, dead = (None, None) if lost is not None else self._take_idle(state)
            lost = lost or dead
            if producer is None:
                try:
                    producer = self._open(state)
                except BrokerUnavailable:
                    if lost is None:
                        raise  # never connected during this send: the broker is down, say so now
                    producer = None
            if producer is not None:
                node = producer.address
                try:
                    producer.acquire()
                    try:
                        flight = producer.publish([items[i] for i in todo])
                    finally:
                        producer.release()
                except Broken as broken:
                    if not broken.retryable:
                        raise PublishError(f"the broker closed the channel: {broken.cause}") from None
                    flight = broken.flight or Flight(len(todo))
                    lost = broken
                finally:
                    self._checkin(state, producer)
                for j, i in enumerate(todo):
                    if flight.done[j]:
                        errors[i] = flight.errors[j]
                        owners[i] = producer.replies if items[i].wants_result else None
                todo = [i for j, i in enumerate(todo) if not flight.done[j]]
            if todo:
                budget = budget or Republish(self.settings.reconnect_attempts, self.settings.reconnect_delay)
                if node is not None:
                    budget.on(node.where)
                    node = None
                time.sleep(budget.next_wait(len(todo), lost.cause if lost else None))
        for error in errors:
            if error is not None:
                raise error
        return owners

    def close(self) -> None:
        """Close every producer of this process; results not read yet can no longer arrive."""
        self._closed = True
        state = self._state
        if state.pid != os.getpid():
            return
        state.stop.set()
        with state.lock:
            producers, state.all, state.idle = list(state.all), [], []
        for producer in producers:
            acquired = producer.lock.acquire(timeout=self.settings.confirm_timeout)
            try:
                producer.close()
            finally:
                if acquired:
                    producer.lock.release()

    @property
    def connections(self) -> int:
        """Open producer connections in this process."""
        return len(self._current().all)


def _keep_alive(ref: weakref.ref[SyncPublisher], state: _PoolState, interval: float) -> None:
    """Pump idle producers so they answer heartbeats and collect replies; exits with the pool."""
    while not state.stop.wait(interval):
        publisher = ref()
        if publisher is None or state.pid != os.getpid() or publisher._state is not state:
            return
        with state.lock:
            producers = list(state.all)
        del publisher
        for producer in producers:
            # A broken one is only marked here; the next checkout discards it (it may be in use).
            producer.try_pump_once()
