"""The async producer: one aio-pika connection per event loop, confirms, mandatory, reconnects.

Publishing goes straight to the underlying aiormq channel, through an Outbox (aio/outbox.py) that
writes the messages of one loop turn together: aio-pika's ``Exchange.publish`` adds a ``Message``
object and a few awaits per message, and aiormq a socket write per message, which measurably cost
throughput (scripts/bench_publish.py). aiormq's reader settles the confirms (one future per
delivery tag) and matches a ``basic.return`` to its publish by ``message_id`` (our task id), so
an unroutable message fails its own send only.

A connection lost during a send is replaced (on the next broker node that answers, when several are
configured) and the unconfirmed messages are published again, within the budget and node order of
``core/failover.py``: at-least-once, like the sync producer, by the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
import aiormq.exceptions

from amqptasks.aio.connection import aconnect
from amqptasks.aio.outbox import Outbox
from amqptasks.aio.results import AsyncReplies
from amqptasks.core.failover import NodeRing, Republish
from amqptasks.core.preflight import Check, Landing, Preflight
from amqptasks.core.routing import Outgoing
from amqptasks.core.topology import Topology
from amqptasks.errors import (
    AmqpTasksError,
    BrokerUnavailable,
    PublishError,
    PublishTimeout,
    UnroutableError,
)
from amqptasks.settings import BrokerAddress, Settings

log = logging.getLogger("amqptasks.publisher")
# Errors that mean "this connection/channel is gone": reconnect and publish again.
LOST = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, OSError)


class _Lost(Exception):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")


class AsyncProducer:
    """One connection and confirm channel with a reply consumer, bound to one event loop."""

    def __init__(self, settings: Settings, connection: Any, channel: Any, replies: AsyncReplies, topology: Topology) -> None:
        self.settings = settings
        self.connection = connection
        self.address: BrokerAddress = getattr(connection, "address", None) or settings.address  # its node
        self.channel = channel  # aiormq channel
        self._outbox = Outbox(channel)  # every publish on the channel goes through it
        self.replies = replies
        self.loop = replies.loop
        self.pid = os.getpid()
        self.broken: BaseException | None = None
        # what this connection knows exists (exchanges, routed delay destinations): core/preflight.py
        self.preflight = Preflight(
            topology.exchanges, delay_prefix=settings.delay_prefix, delay_queue_type=settings.delay_queue_type
        )
        self._sequence = 0
        self._inflight: dict[int, tuple[float, asyncio.Task[Any] | None]] = {}
        self._expired: set[int] = set()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_confirms())

    @classmethod
    async def open(cls, settings: Settings, topology: Topology, name: str, ring: NodeRing | None = None) -> AsyncProducer:
        from amqptasks.aio.topology import aprovision

        connection = await aconnect(settings, name, ring)
        try:
            await aprovision(connection, topology)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            raw = await channel.get_underlay_channel()
            replies = AsyncReplies(asyncio.get_running_loop())
            await replies.start(raw)  # before the first publish, as direct reply-to requires
        except BaseException:
            await _quietly_close(connection)
            raise
        producer = cls(settings, connection, raw, replies, topology)
        connection.close_callbacks.add(producer._on_closed)
        return producer

    def _on_closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self.broken is None:
            self.broken = exc or ConnectionError("connection closed")
        self._watchdog.cancel()
        self.replies.fail(f"{type(self.broken).__name__}: {self.broken}")

    @property
    def usable(self) -> bool:
        return self.broken is None and not self.channel.is_closed

    def ready_for(self, item: Outgoing) -> bool:
        """Usable here and now for ``item`` without any await first."""
        return self.broken is None and self.preflight.ready(item) and self.pid == os.getpid()

    async def _run_checks(self, checks: list[Check]) -> None:
        """Run what core/preflight.py asks before a first publish: probes on a throwaway channel
        (a refused passive declare closes its channel, which must not be the publishing one)."""
        from amqptasks.aio.topology import aprovision, closed_reply

        for check in checks:
            if isinstance(check, Landing):
                await aprovision(self.connection, check.topology)
            else:
                probe = await self.connection.channel(publisher_confirms=False)
                try:
                    if check.kind == "exchange":
                        await probe.declare_exchange(check.name, passive=True)
                    else:
                        await probe.declare_queue(check.name, passive=True)
                except aiormq.exceptions.ChannelClosed as exc:
                    if self.connection.is_closed:
                        raise  # the connection went down: LOST, not a refusal
                    code, text = closed_reply(exc)
                    raise self.preflight.refused(check, code, text, self.address.where) from None
                finally:
                    if not probe.is_closed:
                        await probe.close()
            self.preflight.passed(check)

    async def publish_one(self, item: Outgoing) -> BaseException | None:
        """Publish and await the confirm: the error for this message, or None. Raises _Lost."""
        if item.wants_result:
            self.replies.expect(item.task_id)
        destination = item.destination
        self._sequence += 1
        key = self._sequence
        task = asyncio.current_task()
        self._inflight[key] = (time.monotonic(), task)
        try:
            await self._outbox.publish(item.body, destination.exchange, destination.routing_key, item.properties)
        except asyncio.CancelledError:
            if key not in self._expired or task is None:
                raise
            self._expired.discard(key)
            task.uncancel()  # the watchdog's cancel, not the caller's: keep the caller's count right
            return PublishTimeout(
                f"task {item.task_name} {item.task_id} not confirmed within {self.settings.confirm_timeout} s by "
                f"the broker at {self.address.where} (memory or disk alarm?); it may still be delivered"
            )
        except aiormq.exceptions.PublishError as exc:  # basic.return: routed to no queue
            ret: Any = exc.frame  # spec.Basic.Return
            return UnroutableError(ret.exchange, ret.routing_key, ret.reply_text)
        except aiormq.exceptions.DeliveryError:
            return PublishError(
                f"the broker refused (nacked) task {item.task_name} {item.task_id} to {destination}: "
                "a queue with overflow=reject-publish is full, or the broker had an internal error"
            )
        except aiormq.exceptions.ChannelClosed as exc:
            if self.broken is not None or self.connection.is_closed:
                raise _Lost(exc) from None  # the channel went down with its connection
            return PublishError(f"the broker closed the channel: {exc}")  # 403/406: the request's fault
        except LOST as exc:
            raise _Lost(exc) from None
        finally:
            self._inflight.pop(key, None)
        return None

    async def _watch_confirms(self) -> None:
        """Cancel sends whose confirm is overdue; the send then reports PublishTimeout.

        One watchdog per connection instead of a timer per message: asyncio.timeout() per send
        cost ~5 us of CPU per message, a third of the gap to raw aio-pika in the benchmark.
        """
        while self.broken is None:
            timeout = self.settings.confirm_timeout
            await asyncio.sleep(min(1.0, timeout / 4))
            limit = time.monotonic() - timeout
            overdue = []
            for key, (started, _task) in self._inflight.items():  # insertion order = start order
                if started > limit:
                    break
                overdue.append(key)
            for key in overdue:
                _started, task = self._inflight.pop(key)
                if task is not None:
                    self._expired.add(key)
                    task.cancel()

    async def publish(self, items: Sequence[Outgoing]) -> tuple[list[BaseException | None], list[bool]]:
        """Publish all with confirms in flight together: (error per item, done per item)."""
        try:
            checks = self.preflight.checks(items)
            if checks:
                await self._run_checks(checks)
        except LOST as exc:
            raise _Lost(exc) from None
        if len(items) == 1:  # the common single send skips gather's task per message
            return [await self.publish_one(items[0])], [True]
        outcomes = await asyncio.gather(*(self.publish_one(item) for item in items), return_exceptions=True)
        errors: list[BaseException | None] = []
        done: list[bool] = []
        for outcome in outcomes:
            lost = isinstance(outcome, _Lost)
            if isinstance(outcome, BaseException) and not lost and not isinstance(outcome, AmqpTasksError):
                raise outcome
            errors.append(None if lost else outcome)
            done.append(not lost)
        return errors, done

    async def close(self) -> None:
        if self.broken is None:
            self.broken = ConnectionError("closed by the app")
        self._watchdog.cancel()
        self.replies.fail("closed by the app")
        if self.pid == os.getpid():
            await _quietly_close(self.connection)


async def _quietly_close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=5)
    except Exception:  # closing a broken connection may fail in many ways; it is gone either way
        pass


class AsyncPublisher:
    """Async producers of one App: one per running event loop (asyncio needs no more)."""

    def __init__(self, settings: Settings, topology: Callable[[], Topology], main: str) -> None:
        self.settings = settings
        self._topology = topology
        self._main = main
        self._pid = os.getpid()
        self._producers: dict[asyncio.AbstractEventLoop, AsyncProducer] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._opened = 0
        self._ring = NodeRing(len(settings.addresses))  # which node a new producer tries first

    def _forget_stale(self) -> None:
        if self._pid != os.getpid():  # forked child: never touch the parent's connections
            self._pid, self._producers, self._opening = os.getpid(), {}, {}
        for loop in [loop for loop in self._producers if loop.is_closed()]:
            del self._producers[loop]
            self._opening.pop(loop, None)

    async def _producer(self) -> AsyncProducer:
        loop = asyncio.get_running_loop()
        producer = self._producers.get(loop)
        if producer is not None and producer.usable and producer.pid == os.getpid():
            return producer
        self._forget_stale()
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:  # many coroutines sending at once open one connection, not many
            producer = self._producers.get(loop)
            if producer is not None and producer.usable:
                return producer
            if producer is not None:
                if producer.broken is not None:  # lost with its node: start with the next one
                    self._ring.lost_node(self.settings.addresses, producer.address)
                await producer.close()
            self._opened += 1
            name = f"amqptasks async producer {self._main} pid={os.getpid()} #{self._opened}"
            producer = await AsyncProducer.open(self.settings, self._topology(), name, self._ring)
            if self._ring.count > 1:
                log.info("async producer #%d connected to the broker node at %s", self._opened, producer.address.where)
            self._producers[loop] = producer
            return producer

    async def publish(self, items: Sequence[Outgoing]) -> list[AsyncReplies | None]:
        """Publish with confirms; per item, the reply source of the channel it went out on."""
        current = self._producers.get(asyncio.get_running_loop())
        # A connection that died since the last send counts as lost: reconnects get the retry budget.
        lost: BaseException | None = current.broken if current is not None else None
        if len(items) == 1:  # the common single send: no bookkeeping lists, no gather
            item = items[0]
            if current is not None and current.ready_for(item):
                try:
                    error = await current.publish_one(item)
                except _Lost as exc:
                    lost = exc.cause  # reconnect and publish again below
                    current.broken = current.broken or exc.cause
                else:
                    if error is not None:
                        raise error
                    return [current.replies if item.wants_result else None]
        count = len(items)
        owners: list[AsyncReplies | None] = [None] * count
        errors: list[BaseException | None] = [None] * count
        todo = list(range(count))
        budget: Republish | None = None  # made on the first loss only
        node: BrokerAddress | None = None
        while todo:
            try:
                producer: AsyncProducer | None = await self._producer()
            except BrokerUnavailable:
                if lost is None:
                    raise
                producer = None
            if producer is not None:
                node = producer.address
                try:
                    results, done = await producer.publish([items[i] for i in todo])
                except _Lost as exc:
                    results, done = [None] * len(todo), [False] * len(todo)
                    lost = exc.cause
                    producer.broken = producer.broken or exc.cause
                for j, i in enumerate(todo):
                    if done[j]:
                        errors[i] = results[j]
                        owners[i] = producer.replies if items[i].wants_result else None
                if not all(done):
                    lost = lost or producer.broken or ConnectionError("connection lost")
                    producer.broken = producer.broken or lost
                todo = [i for j, i in enumerate(todo) if not done[j]]
            if todo:
                budget = budget or Republish(self.settings.reconnect_attempts, self.settings.reconnect_delay)
                if node is not None:
                    budget.on(node.where)
                    node = None
                await asyncio.sleep(budget.next_wait(len(todo), lost))
        for error in errors:
            if error is not None:
                raise error
        return owners

    async def aclose(self) -> None:
        """Close this loop's producer; producers of other (running) loops are asked to close."""
        if self._pid != os.getpid():
            return
        current = asyncio.get_running_loop()
        producers, self._producers = self._producers, {}
        for loop, producer in producers.items():
            if loop is current:
                await producer.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(producer.close(), loop)

    def close_nowait(self) -> None:
        """Close from sync code: schedule the close on each producer's loop if it still runs."""
        if self._pid != os.getpid():
            return
        producers, self._producers = self._producers, {}
        for loop, producer in producers.items():
            if loop.is_closed():
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(producer.close(), loop)
            else:
                loop.run_until_complete(producer.close())
