"""The sync producer: pika, publisher confirms always, mandatory routing, pipelined confirms.

Design:

* A **pool of producers**, each one connection + one channel + its lock. pika's BlockingConnection
  is not thread-safe; a thread takes an idle producer for the length of one publish, so N threads
  publishing at once use N connections, and a thread pool never grows connections past its size.
* **Pipelined confirms** on pika's underlying channel (``BlockingChannel._impl``): all messages of
  a send are written, then the connection is pumped until every delivery tag is acked or nacked.
  A ``basic.return`` (unroutable) arrives *before* the ack of the same message and is matched by
  ``message_id`` (= the task id). No confirm progress within ``settings.confirm_timeout`` raises
  PublishTimeout instead of hanging.
* **Reconnects**: a connection lost during a send is replaced and the unconfirmed messages are
  published again, at most ``settings.reconnect_attempts`` times. A message whose confirm was lost
  with the connection may therefore arrive twice — delivery is at-least-once; tasks should be
  idempotent (docs/protocol.md).
* **Fork safety** (gunicorn ``--preload``): producers belong to the pid that opened them. A child
  drops the inherited pool without closing anything over the wire — closing would also tear down
  the parent's socket state (the epoll set is shared across fork) — and opens its own.
* **Heartbeats**: an idle BlockingConnection answers heartbeats only while pumped, so a daemon
  thread pumps idle producers every heartbeat/3 s; otherwise the broker would drop them.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic

from amqptasks.core.envelope import Properties
from amqptasks.core.routing import Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import AmqpTasksError, BrokerUnavailable, PublishError, PublishTimeout, UnroutableError
from amqptasks.settings import Settings
from amqptasks.sync.connection import connect
from amqptasks.sync.results import Replies

IDLE_CHECK_AFTER = 1.0  # seconds idle after which a producer is polled for a close before use


class Broken(Exception):
    """The producer can no longer publish. ``retryable``: the connection was lost (reconnect)."""

    def __init__(self, cause: BaseException | str, retryable: bool) -> None:
        self.cause = cause
        self.retryable = retryable
        self.flight: _Flight | None = None  # the publish that was under way, if any
        super().__init__(str(cause) or type(cause).__name__)


class _Flight:
    """The messages of one publish call on one producer, until each is acked or nacked."""

    __slots__ = ("remaining", "errors", "done")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.errors: list[BaseException | None] = [None] * count
        self.done = [False] * count


class _Slot:
    __slots__ = ("flight", "index", "tag", "item")

    def __init__(self, flight: _Flight, index: int, tag: int, item: Outgoing) -> None:
        self.flight = flight
        self.index = index
        self.tag = tag
        self.item = item


def pika_properties(p: Properties) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=p.content_type,
        delivery_mode=p.delivery_mode,
        headers=dict(p.headers),
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        priority=p.priority,
        timestamp=p.timestamp,
    )


class Producer:
    """One connection and channel in confirm mode with a reply consumer. Use under :meth:`hold`."""

    def __init__(self, settings: Settings, topology: Topology, name: str) -> None:
        from amqptasks.sync.topology import provision

        self.settings = settings
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.broken: Broken | None = None
        self.last_used = time.monotonic()
        self._wanted = 0  # publishers waiting for the lock while a get() pumps
        self._wanted_lock = threading.Lock()
        self._tag = 0
        self._low = 1  # lowest delivery tag that may still be unconfirmed
        self._by_tag: dict[int, _Slot] = {}
        self._by_mid: dict[str, _Slot] = {}
        self._known_exchanges = {"", *topology.exchanges}
        self.connection = connect(settings, name)
        try:
            provision(self.connection, topology)
            self.channel = self.connection.channel()
            self.channel_impl: Any = self.channel._impl  # the callback-level channel: pipelined confirms
            selected = self.signal()
            self.channel_impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected)
            if not self.pump(selected.is_set, time.monotonic() + settings.confirm_timeout):
                raise PublishTimeout(f"the broker at {settings.address.where} did not enable publisher confirms in time")
            self.channel_impl.add_on_return_callback(self._on_return)
            self.channel_impl.add_on_close_callback(self._on_channel_closed)
            self.replies = Replies(self)
            self.replies.start()
        except BaseException:
            self.close()
            raise

    # --- I/O --------------------------------------------------------------------------------------

    def signal(self) -> _Signal:
        """A callback for a pika RPC reply that records it and ends the pump waiting for it."""
        return _Signal(self)

    def wake(self) -> None:
        """End the current ``process_data_events`` early (called from callbacks, same thread)."""
        self.connection._request_channel_dispatch(-1)

    def _break(self, cause: BaseException | str, retryable: bool) -> Broken:
        if self.broken is None:
            self.broken = Broken(cause, retryable)
        return self.broken

    def pump(self, until: Callable[[], bool], deadline: float) -> bool:
        """Process I/O until ``until()`` or ``deadline``; the caller holds the lock. Raises Broken."""
        while not until():
            if self.broken is not None:
                raise self.broken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self.connection.process_data_events(time_limit=remaining)
            except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
                raise self._break(exc, retryable=True) from None
        return True

    def try_pump_once(self) -> None:
        """Read what is waiting, if nobody else is using the connection. Never blocks, never raises."""
        if self.broken is not None or self.pid != os.getpid() or not self.lock.acquire(blocking=False):
            return
        try:
            self.connection.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
            self._break(exc, retryable=True)
        finally:
            self.lock.release()

    def pump_for(self, until: Callable[[], bool], slice_end: float) -> None:
        """Pump from any thread (a get()) for at most one slice, yielding to waiting publishers."""
        if not self.lock.acquire(timeout=max(0.0, slice_end - time.monotonic())):
            return
        try:
            if self.broken is None and not until():
                self.pump(lambda: until() or self._wanted > 0, slice_end)
        except Broken:
            pass  # recorded in self.broken; the caller reports it
        finally:
            self.lock.release()
        if self._wanted:
            time.sleep(0.001)  # let the publisher that woke us take the connection first

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Exclusive use for a publish. A get() pumping this connection is woken to hand it over."""
        if not self.lock.acquire(blocking=False):
            with self._wanted_lock:
                self._wanted += 1
            try:
                try:
                    self.connection.add_callback_threadsafe(_nothing)  # the one thread-safe pika call
                except (pika.exceptions.AMQPError, OSError):
                    pass
                self.lock.acquire()
            finally:
                with self._wanted_lock:
                    self._wanted -= 1
        try:
            yield
        finally:
            self.last_used = time.monotonic()
            self.lock.release()

    def usable_here(self) -> bool:
        return self.broken is None and self.pid == os.getpid()

    # --- callbacks (run inside process_data_events) ------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ack = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            last = self._tag if tag == 0 else tag
            for t in range(self._low, last + 1):
                self._settle(t, ack)
            self._low = max(self._low, last + 1)
        else:
            self._settle(tag, ack)
            while self._low <= self._tag and self._low not in self._by_tag:
                self._low += 1

    def _settle(self, tag: int, ack: bool) -> None:
        slot = self._by_tag.pop(tag, None)
        if slot is None:
            return
        item = slot.item
        if self._by_mid.get(item.task_id) is slot:
            del self._by_mid[item.task_id]
        flight = slot.flight
        if not ack and flight.errors[slot.index] is None:
            flight.errors[slot.index] = PublishError(
                f"the broker refused (nacked) task {item.task_name} {item.task_id} to {item.destination}: "
                "a queue with overflow=reject-publish is full, or the broker had an internal error"
            )
        flight.done[slot.index] = True
        flight.remaining -= 1
        if flight.remaining == 0:
            self.wake()

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        slot = self._by_mid.get(properties.message_id)
        if slot is not None:
            slot.flight.errors[slot.index] = UnroutableError(method.exchange, method.routing_key, method.reply_text)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        # A channel error (404, 403, 406) is the request's fault: do not retry it elsewhere.
        self._break(reason, retryable=not isinstance(reason, pika.exceptions.ChannelClosedByBroker))
        self.wake()

    # --- publishing -------------------------------------------------------------------------------

    def _check_exchange(self, exchange: str) -> None:
        """Publishing to a missing exchange kills the channel (and the replies on it): ask first."""
        if exchange in self._known_exchanges:
            return
        probe = self.connection.channel()
        try:
            probe.exchange_declare(exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise PublishError(
                    f"exchange {exchange!r} does not exist on the broker at {self.settings.address.where}; "
                    "declare it in the topology file (exchanges:) or fix the route"
                ) from None
            raise PublishError(f"cannot publish to exchange {exchange!r}: {exc.reply_text}") from None
        finally:
            if probe.is_open:
                probe.close()
        self._known_exchanges.add(exchange)

    def publish(self, items: Sequence[Outgoing]) -> _Flight:
        """Publish all, then wait for every confirm. Raises Broken (with ``flight``) or PublishTimeout."""
        flight = _Flight(len(items))
        try:
            for item in items:
                self._check_exchange(item.destination.exchange)
            publish = self.channel_impl.basic_publish
            for index, item in enumerate(items):
                if item.wants_result:
                    self.replies.expect(item.task_id)
                self._tag += 1
                slot = _Slot(flight, index, self._tag, item)
                self._by_tag[self._tag] = slot
                self._by_mid[item.task_id] = slot
                destination = item.destination
                publish(destination.exchange, destination.routing_key, item.body, pika_properties(item.properties), mandatory=True)
            self._await(flight)
        except Broken as broken:
            broken.flight = flight
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            broken = self._break(exc, retryable=not isinstance(exc, pika.exceptions.ChannelClosedByBroker))
            broken.flight = flight
            raise broken from None
        return flight

    def _await(self, flight: _Flight) -> None:
        timeout = self.settings.confirm_timeout
        progress = flight.remaining
        while not self.pump(lambda: flight.remaining == 0, time.monotonic() + timeout):
            if flight.remaining < progress:  # confirms still arriving: a big batch, not a stall
                progress = flight.remaining
                continue
            self._abandon(flight)
            raise PublishTimeout(
                f"{flight.remaining} of {len(flight.done)} message(s) not confirmed within {timeout} s by the broker "
                f"at {self.settings.address.where} (memory or disk alarm? see `rabbitmqctl status`); "
                "they may still be delivered"
            )

    def _abandon(self, flight: _Flight) -> None:
        for tag in [t for t, slot in self._by_tag.items() if slot.flight is flight]:
            slot = self._by_tag.pop(tag)
            self._by_mid.pop(slot.item.task_id, None)

    def close(self) -> None:
        """Close the connection (only from the process that opened it)."""
        self._break("closed by the app", retryable=True)
        if self.pid == os.getpid():
            try:
                if self.connection.is_open:
                    self.connection.close()
            except (pika.exceptions.AMQPError, OSError, AttributeError):
                pass


class _Signal:
    __slots__ = ("_producer", "_set")

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._set = False

    def __call__(self, *_args: Any) -> None:
        self._set = True
        self._producer.wake()

    def is_set(self) -> bool:
        return self._set


def _nothing() -> None:
    """Scheduled with add_callback_threadsafe only to wake the connection's I/O loop."""


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

    def _checkout(self, state: _PoolState, fresh: bool) -> Producer:
        if not fresh:
            while True:
                with state.lock:
                    producer = state.idle.pop() if state.idle else None
                if producer is None:
                    break
                if time.monotonic() - producer.last_used > IDLE_CHECK_AFTER:
                    producer.try_pump_once()  # notice a connection closed while idle before using it
                if producer.broken is None:
                    return producer
                self._discard(state, producer)
        with state.lock:
            state.opened += 1
            number = state.opened
        producer = Producer(self.settings, self._topology(), f"amqptasks producer {self._main} pid={state.pid} #{number}")
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
        attempt = 0
        while todo:
            state = self._current()
            try:
                producer = self._checkout(state, fresh=lost is not None)
            except BrokerUnavailable:
                if lost is None:
                    raise  # never connected during this send: the broker is down, say so now
                producer = None
            if producer is not None:
                try:
                    with producer.hold():
                        flight = producer.publish([items[i] for i in todo])
                except Broken as broken:
                    if not broken.retryable:
                        raise PublishError(f"the broker closed the channel: {broken.cause}") from None
                    flight = broken.flight or _Flight(len(todo))
                    lost = broken
                finally:
                    self._checkin(state, producer)
                for j, i in enumerate(todo):
                    if flight.done[j]:
                        errors[i] = flight.errors[j]
                        owners[i] = producer.replies if items[i].wants_result else None
                todo = [i for j, i in enumerate(todo) if not flight.done[j]]
            if todo:
                attempt += 1
                if attempt > self.settings.reconnect_attempts:
                    raise BrokerUnavailable(
                        f"lost the connection to the broker at {self.settings.address.where} ({lost.cause if lost else 'closed'}); "
                        f"{len(todo)} message(s) unconfirmed after {attempt} attempt(s) — they may or may not have been delivered"
                    )
                time.sleep(self.settings.reconnect_delay * attempt)
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
