"""One worker process's consuming loop: connect, provision, consume with prefetch, reconnect, stop.

Reconnects fail over between the broker's nodes (core/failover.py): a lost node is tried last, and
after a round in which no node answered the wait grows to at most 5 s.

What happens to each delivery (run, reply, ack, retry, dead-letter) is :mod:`amqptasks.worker.handling`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any, cast

import aiormq

from amqptasks.aio.connection import aconnect
from amqptasks.core.deadletter import dead_letter_target
from amqptasks.core.failover import NodeRing
from amqptasks.errors import BrokerUnavailable
from amqptasks.worker.acks import AckSender
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.copies import CopyPublisher
from amqptasks.worker.handling import RECOVERABLE, DeliveryHandler, brief

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.core.topology import Topology

log = logging.getLogger("amqptasks.worker")


class Consumer:
    """Consumes ``config.queues`` in this process until :meth:`request_stop` (or drained, in burst)."""

    def __init__(self, app: App, topology: Topology, config: WorkerConfig, name: str) -> None:
        self.app = app
        self.topology = topology
        self.config = config
        self.name = name
        self._stopping = asyncio.Event()
        self._handler = DeliveryHandler(app, config, name, self._stopping)
        self._targets = {queue: dead_letter_target(topology, queue) for queue in config.queues}
        self._consume: aiormq.Channel | None = None
        self._consumed_since_loss = False
        self._ring = NodeRing(len(app.settings.addresses))
        self._node: str | None = None  # host:port of the node this process is connected to

    # --- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop consuming; running tasks finish (within the grace period) and are acked."""
        self._stopping.set()
        self._handler.stop()

    async def run(self) -> None:
        """Connect, consume, and reconnect after connection loss, until stopped."""
        delay = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                    delay = 0.1
                except RECOVERABLE as exc:
                    if self._stopping.is_set():
                        break
                    wait = self._after_failure(exc, delay)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), timeout=wait)
                    except TimeoutError:
                        pass
                    if not isinstance(exc, BrokerUnavailable):
                        delay = min(wait * 2, 5.0)
        finally:
            await self._handler.close()
            log.info("%s stopped%s", self.name, f" (last broker node {self._node})" if self._node else "")

    def _after_failure(self, exc: BaseException, delay: float) -> float:
        """Log what failed and return the seconds to wait before the next connect (core/failover.py
        orders the nodes: the one just lost is tried last)."""
        if isinstance(exc, BrokerUnavailable):  # no node answered in a whole round
            wait = self._ring.round_failed()
            log.warning("%s: %s; retrying in %.1fs", self.name, exc, wait)
            return wait
        if self._node is not None:
            self._ring.lost(self._ring.current)
        if self._consumed_since_loss:  # it worked until now: back off from the start
            delay, self._consumed_since_loss = 0.1, False
        others = f" (next: {self.app.settings.addresses[self._ring.current].where})" if self._ring.count > 1 else ""
        log.warning("%s: connection lost (%s) to %s; reconnecting in %.1fs%s", self.name, brief(exc), self._node or "the broker", delay, others)
        self._node = None
        return delay

    async def _session(self) -> None:
        """One connection's life: provision, consume, wait for stop or loss, drain on stop."""
        from amqptasks.aio.topology import aprovision

        connection = await aconnect(self.app.settings, f"amqptasks worker {self.app.main} {self.name} pid={os.getpid()}", self._ring)
        self._node = connection.address.where if connection.address is not None else None
        log.info("%s connected to the broker node at %s", self.name, connection.describe_node())
        lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_close(_sender: Any, exc: BaseException | None = None) -> None:
            self._handler.overruns.channel_closed(exc)  # consumer_timeout: worker/overrun.py
            if not lost.done():
                lost.set_result(exc)

        connection.close_callbacks.add(on_close)
        try:
            await aprovision(connection, self.topology)
            consume_channel = await connection.channel(publisher_confirms=False)
            confirm_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # A channel the broker closes (consumer_timeout on a long task, a 404 on a publish) with
            # the connection still up counts as lost too: start over rather than idle on it.
            consume_channel.close_callbacks.add(on_close)
            confirm_channel.close_callbacks.add(on_close)
            self._consume = cast(aiormq.Channel, await consume_channel.get_underlay_channel())
            tap = connection.tap  # None with AMQPTASKS_FAST_PATHS=0: aiormq's own consumer and acks
            acks = AckSender(self._consume, RECOVERABLE, write=tap.write if tap else None)
            copies = CopyPublisher(await confirm_channel.get_underlay_channel(), self._targets, self.app.settings)
            self._handler.begin(acks, copies, lost)
            # Per-consumer prefetch (global=False): global QoS breaks quorum queues.
            await self._consume.basic_qos(prefetch_count=self.config.prefetch, global_=False)
            tags: dict[str, str] = {}
            for queue in self.config.queues:
                tag = f"amqptasks-{uuid.uuid4().hex}"
                # Deliveries come straight off the socket (aio/tap.py); aiormq's callback is the same path.
                if tap is not None:
                    tap.take(self._consume, tag, self._handler.taker_for(queue))
                await self._consume.basic_consume(queue, self._handler.callback_for(queue), no_ack=False, consumer_tag=tag)
                tags[tag] = queue
            log.info("%s ready: consuming from %s on %s", self.name, ", ".join(self.config.queues), self._node)
            self._consumed_since_loss = True
            stop_wait = asyncio.ensure_future(self._stopping.wait())
            burst_wait = asyncio.ensure_future(self._drained()) if self.config.burst else None
            cancelled = asyncio.ensure_future(self._cancelled_by_broker(tags))
            waits = [w for w in (stop_wait, burst_wait, cancelled, lost) if w is not None]
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stop_wait, burst_wait, cancelled):
                if waiter is not None and not waiter.done():
                    waiter.cancel()
            if lost in done:
                raise ConnectionError(f"connection or channel closed: {brief(lost.result())}")
            burst_error = burst_wait.exception() if burst_wait is not None and burst_wait.done() else None
            if burst_error is not None:
                raise burst_error  # not "drained": reconnect and go on
            if cancelled in done and not self._stopping.is_set():
                # Start over on a new connection: provisioning declares the queue again if it is gone.
                raise ConnectionError(f"the broker cancelled the consumer of {cancelled.result()} (queue deleted?)")
            self._stopping.set()
            await self._cancel_consumers(list(tags))
            await self._drain_inflight()
            await acks.flush_now(timeout=self.app.settings.confirm_timeout)
            # Closing the channel is a round trip behind the acks: once it returns, the broker has them.
            try:
                await self._consume.close()
            except RECOVERABLE:
                pass  # the connection went first: unacked messages are redelivered
        finally:
            if not connection.is_closed:
                await connection.close()

    async def _cancelled_by_broker(self, tags: dict[str, str]) -> str:
        """The queue whose consumer the broker cancelled (basic.cancel: the queue was deleted, or a
        quorum queue lost its leader). aiormq drops such a consumer silently; without this check
        the worker would stay connected and idle for good."""
        assert self._consume is not None
        while True:
            await asyncio.sleep(1.0)
            for tag, queue in tags.items():
                if tag not in self._consume.consumers:
                    return queue

    async def _cancel_consumers(self, tags: list[str]) -> None:
        assert self._consume is not None
        for tag in tags:
            try:
                await self._consume.basic_cancel(tag)
            except RECOVERABLE:
                return

    async def _drain_inflight(self) -> None:
        if not self._handler.inflight:
            return
        log.info("waiting up to %ss for %d running task(s)", self.config.grace, len(self._handler.inflight))
        _done, pending = await asyncio.wait(set(self._handler.inflight), timeout=self.config.grace)
        if pending:
            log.warning("%d task(s) still running after the grace period; they return to the queue", len(pending))

    async def _drained(self) -> None:
        """Burst mode: finish when every queue is empty and nothing is in flight."""
        assert self._consume is not None
        while True:
            await asyncio.sleep(0.2)
            if self._handler.inflight:
                continue
            counts = [(await self._consume.queue_declare(q, passive=True)).message_count for q in self.config.queues]
            if not any(counts) and not self._handler.inflight:
                log.info("%s: queues drained (burst mode); stopping", self.name)
                return
