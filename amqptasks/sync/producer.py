"""One sync producer: a pika connection and channel in confirm mode, pipelined confirms, returns.

* **Pipelined confirms** on pika's underlying channel (``BlockingChannel._impl``): all messages of
  a send are written, then the connection is pumped until every delivery tag is acked or nacked.
  A ``basic.return`` (unroutable) arrives *before* the ack of the same message and is matched by
  ``message_id`` (= the task id). No confirm progress within ``settings.confirm_timeout`` raises
  PublishTimeout instead of hanging.
* **Direct socket I/O** for the write and the wait for confirms (``sync/direct.py``): a single
  confirmed send skips two turns of pika's I/O loop. Messages are encoded by ``core/frames.py``
  (pika's encoder only for header values that leaves alone).
* A lost connection or channel marks the producer broken (``Broken``, with the messages still
  unconfirmed): the pool (``sync/publisher.py``) replaces it and publishes those again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic

from amqptasks.core.envelope import Properties
from amqptasks.core.failover import NodeRing
from amqptasks.core.frames import encode_publish
from amqptasks.core.preflight import Check, Landing, Preflight
from amqptasks.core.routing import Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import (
    AmqpTasksError,
    PublishError,
    PublishTimeout,
    UnroutableError,
)
from amqptasks.settings import Settings
from amqptasks.sync._pika_internals import channel_impl
from amqptasks.sync.connection import connect_node
from amqptasks.sync.direct import DirectSocket, EncodedProperties
from amqptasks.sync.results import Broken, Replies, SharedConnection

IDLE_CHECK_AFTER = 1.0  # seconds idle after which a producer is polled for a close before use


class Flight:
    """The messages of one publish call on one producer, until each is acked or nacked."""

    __slots__ = ("done", "errors", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.errors: list[BaseException | None] = [None] * count
        self.done = [False] * count


class _Slot:
    __slots__ = ("flight", "index", "item", "tag")

    def __init__(self, flight: Flight, index: int, tag: int, item: Outgoing) -> None:
        self.flight = flight
        self.index = index
        self.tag = tag
        self.item = item


def pika_properties(p: Properties) -> pika.BasicProperties:
    return EncodedProperties(p)  # every header type, also where pika encodes the message


class Producer(SharedConnection):
    """One connection and channel in confirm mode with a reply consumer; publish between acquire/release."""

    def __init__(self, settings: Settings, topology: Topology, name: str, ring: NodeRing | None = None) -> None:
        from amqptasks.sync.topology import provision

        connection, self.address = connect_node(settings, name, ring)  # the node it is on (failover)
        super().__init__(settings, connection)
        self.direct = self._direct = DirectSocket(self.connection)  # _direct: typed as never None here
        self._tag = 0
        self._low = 1  # lowest delivery tag that may still be unconfirmed
        self._by_tag: dict[int, _Slot] = {}
        self._by_mid: dict[str, _Slot] = {}
        # what this connection knows exists (exchanges, routed delay destinations): core/preflight.py
        self.preflight = Preflight(
            topology.exchanges, delay_prefix=settings.delay_prefix, delay_queue_type=settings.delay_queue_type
        )
        try:
            provision(self.connection, topology)
            self.channel = self.connection.channel()
            self.channel_impl = channel_impl(self.channel)  # the callback-level channel: pipelined confirms
            selected = self.signal()
            self.channel_impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected)
            if not self.pump(selected.is_set, time.monotonic() + settings.confirm_timeout):
                raise PublishTimeout(f"the broker at {self.address.where} did not enable publisher confirms in time")
            self.channel_impl.add_on_return_callback(self._on_return)
            self.direct.take_acks(self.channel_impl.channel_number, self._confirmed)
            self.channel_impl.add_on_close_callback(self._on_channel_closed)
            self.replies = Replies(self)
            self.replies.start(self.channel_impl)
        except BaseException:
            self.close()
            raise

    # --- callbacks (run inside the pump) -------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        self._confirmed(method.delivery_tag, method.multiple, isinstance(method, Basic.Ack))

    def _confirmed(self, tag: int, multiple: bool, ack: bool = True) -> None:
        if multiple:
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

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        slot = self._by_mid.get(properties.message_id)
        if slot is not None:
            slot.flight.errors[slot.index] = UnroutableError(method.exchange, method.routing_key, method.reply_text)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        # A channel error (404, 403, 406) is the request's fault: do not retry it elsewhere.
        self._break(reason, retryable=not isinstance(reason, pika.exceptions.ChannelClosedByBroker))

    # --- publishing -------------------------------------------------------------------------------

    def _run_checks(self, checks: list[Check]) -> None:
        """Run what core/preflight.py asks before a first publish: probes on a throwaway channel
        (a refused passive declare closes its channel, which must not be the publishing one)."""
        from amqptasks.sync.topology import provision

        for check in checks:
            if isinstance(check, Landing):
                provision(self.connection, check.topology)
            else:
                probe = self.connection.channel()
                try:
                    if check.kind == "exchange":
                        probe.exchange_declare(check.name, passive=True)
                    else:
                        probe.queue_declare(check.name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    raise self.preflight.refused(check, exc.reply_code, exc.reply_text, self.address.where) from None
                finally:
                    if probe.is_open:
                        probe.close()
            self.preflight.passed(check)

    def publish(self, items: Sequence[Outgoing]) -> Flight:
        """Publish all, then wait for every confirm. Raises Broken (with ``flight``) or PublishTimeout."""
        flight = Flight(len(items))
        try:
            checks = self.preflight.checks(items)
            if checks:
                self._run_checks(checks)
            channel = self.channel_impl
            frame_max = self._direct.frame_max
            for index, item in enumerate(items):
                if item.wants_result:
                    self.replies.expect(item.task_id)
                self._tag += 1
                slot = _Slot(flight, index, self._tag, item)
                self._by_tag[self._tag] = slot
                self._by_mid[item.task_id] = slot
                destination = item.destination
                data = None
                if frame_max is not None and channel.is_open:  # a closed channel: pika raises the right error
                    data = encode_publish(
                        channel.channel_number, destination.exchange, destination.routing_key, item.body, item.properties, frame_max
                    )
                if data is not None:
                    self._direct.send(data)
                else:
                    properties = pika_properties(item.properties)
                    channel.basic_publish(destination.exchange, destination.routing_key, item.body, properties, mandatory=True)
            self._await(flight)
        except Broken as exc:
            exc.flight = flight
            raise
        except AmqpTasksError:
            raise  # PublishTimeout is a TimeoutError, hence an OSError: not a lost connection
        except (pika.exceptions.AMQPError, OSError) as exc:
            failure = self._break(exc, retryable=not isinstance(exc, pika.exceptions.ChannelClosedByBroker))
            failure.flight = flight
            raise failure from None
        return flight

    def _await(self, flight: Flight) -> None:
        timeout = self.settings.confirm_timeout
        progress = flight.remaining
        while not self.pump(lambda: flight.remaining == 0, time.monotonic() + timeout):
            if flight.remaining < progress:  # confirms still arriving: a big batch, not a stall
                progress = flight.remaining
                continue
            self._abandon(flight)
            raise PublishTimeout(
                f"{flight.remaining} of {len(flight.done)} message(s) not confirmed within {timeout} s by the broker "
                f"at {self.address.where} (memory or disk alarm? see `rabbitmqctl status`); "
                "they may still be delivered"
            )

    def _abandon(self, flight: Flight) -> None:
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
