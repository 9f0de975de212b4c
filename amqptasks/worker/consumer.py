"""One worker process's consuming loop: prefetch, late acks, replies, dead-letters, reconnects.

I/O only: which task runs and what its outcome is comes from :mod:`amqptasks.worker.execute`; where
a dead letter goes comes from :mod:`amqptasks.core.deadletter`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.exceptions

from amqptasks.aio import wire
from amqptasks.aio.connection import aconnect
from amqptasks.core.deadletter import dead_letter_target
from amqptasks.core.envelope import (
    Outcome,
    PoisonMessage,
    decode_task,
    encode_result,
    failure,
)
from amqptasks.core.retry import Retry, decide_for_task
from amqptasks.errors import BrokerUnavailable
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.execute import Attempt, Prepared, prepare, run_async, run_sync
from amqptasks.worker.acks import AckSender
from amqptasks.worker.copies import CopyPublisher
from amqptasks.worker.handoff import ThreadHandoff
from amqptasks.worker.inline import InlinePolicy, LoopWatchdog
from amqptasks.worker.replies import ReplyPublisher

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.core.topology import Topology

log = logging.getLogger("amqptasks.worker")


@dataclass(frozen=True)
class Decoded:
    """A delivery's task, ready to run, and where its reply goes."""

    prepared: Prepared
    reply_to: str | bytes | None


@dataclass(frozen=True)
class Ran:
    """A delivery's task that has run: what is left is to reply, ack, retry or dead-letter."""

    decoded: Decoded
    started: float  # perf_counter() when it started
    attempt: Attempt


class Done(enum.Enum):
    DONE = "settled"


DONE = Done.DONE  # a delivery settled on the loop, nothing left for a task
Resume = Decoded | Ran | Exception | None  # where a delivery's task goes on from (None: the start)

# Connection-level failures after which we reconnect rather than crash.
RECOVERABLE = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: sent on a channel that closed
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    BrokerUnavailable,
)


class Consumer:
    """Consumes ``config.queues`` in this process until :meth:`request_stop` (or drained, in burst)."""

    def __init__(self, app: App, topology: Topology, config: WorkerConfig, name: str) -> None:
        self.app = app
        self.topology = topology
        self.config = config
        self.name = name
        self._threads: ThreadHandoff[Prepared, Attempt] | None = None  # started with the first plain task
        self._inline = InlinePolicy(enabled=config.inline)  # plain tasks proven instant run on the loop
        self._watchdog = LoopWatchdog()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._targets = {queue: dead_letter_target(topology, queue) for queue in config.queues}
        self._consume: aiormq.abc.AbstractChannel | None = None
        self._acks: AckSender | None = None  # the current consume channel's
        self._copies: CopyPublisher | None = None  # dead letters and retries, confirmed
        self._replies: ReplyPublisher | None = None
        self._consumed_since_loss = False
        self._lost: asyncio.Future[Any] | None = None  # resolved to end the current session

    # --- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop consuming; running tasks finish (within the grace period) and are acked."""
        self._stopping.set()
        if self._threads is not None:
            self._threads.stop()

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
                    if self._consumed_since_loss:  # it worked until now: back off from the start
                        delay, self._consumed_since_loss = 0.1, False
                    log.warning("connection lost (%s); reconnecting in %.1fs", _brief(exc), delay)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                    except asyncio.TimeoutError:
                        pass
                    delay = min(delay * 2, 5.0)
        finally:
            if self._threads is not None:
                self._threads.stop()
            if self._replies is not None:
                await self._replies.close()

    async def _session(self) -> None:
        """One connection's life: provision, consume, wait for stop or loss, drain on stop."""
        from amqptasks.aio.topology import aprovision

        if self._replies is None:
            self._replies = ReplyPublisher(self.app.settings, f"amqptasks worker {self.app.main} {self.name}")
        connection = await aconnect(
            self.app.settings, f"amqptasks worker {self.app.main} {self.name} pid={os.getpid()}", tapped=True
        )
        self._lost = lost = asyncio.get_running_loop().create_future()

        def on_close(_sender: Any, exc: BaseException | None = None) -> None:
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
            self._consume = await consume_channel.get_underlay_channel()
            self._acks = AckSender(self._consume, hold=max(1, self.config.prefetch // 2), recoverable=RECOVERABLE)
            self._copies = CopyPublisher(await confirm_channel.get_underlay_channel(), self._targets, self.app.settings)
            # Per-consumer prefetch (global=False): global QoS breaks quorum queues.
            await self._consume.basic_qos(prefetch_count=self.config.prefetch, global_=False)
            tags: dict[str, str] = {}
            tap = connection.tap  # type: ignore[attr-defined]
            for queue in self.config.queues:
                tag = f"amqptasks-{uuid.uuid4().hex}"
                # Deliveries come straight off the socket (aio/tap.py); aiormq's callback is the same path.
                tap.take(self._consume, tag, self._taker_for(queue))
                await self._consume.basic_consume(queue, self._callback_for(queue), no_ack=False, consumer_tag=tag)
                tags[tag] = queue
            log.info("%s consuming from %s", self.name, ", ".join(self.config.queues))
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
                raise ConnectionError(f"connection or channel closed: {_brief(lost.result())}")
            if burst_wait is not None and burst_wait.done() and burst_wait.exception() is not None:
                raise burst_wait.exception()  # type: ignore[misc]  # not "drained": reconnect and go on
            if cancelled in done and not self._stopping.is_set():
                # Start over on a new connection: provisioning declares the queue again if it is gone.
                raise ConnectionError(f"the broker cancelled the consumer of {cancelled.result()} (queue deleted?)")
            self._stopping.set()
            await self._cancel_consumers(list(tags))
            await self._drain_inflight()
            await self._acks.flush_now(timeout=self.app.settings.confirm_timeout)
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
        if not self._inflight:
            return
        log.info("waiting up to %ss for %d running task(s)", self.config.grace, len(self._inflight))
        _done, pending = await asyncio.wait(set(self._inflight), timeout=self.config.grace)
        if pending:
            log.warning("%d task(s) still running after the grace period; they return to the queue", len(pending))

    async def _drained(self) -> None:
        """Burst mode: finish when every queue is empty and nothing is in flight."""
        assert self._consume is not None
        while True:
            await asyncio.sleep(0.2)
            if self._inflight:
                continue
            counts = [(await self._consume.queue_declare(q, passive=True)).message_count for q in self.config.queues]
            if not any(counts) and not self._inflight:
                log.info("%s: queues drained (burst mode); stopping", self.name)
                return

    # --- one delivery ------------------------------------------------------------------------

    def _callback_for(self, queue: str) -> Any:
        async def on_message(delivery: aiormq.abc.DeliveredMessage, resume: Resume = None) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._inflight.add(task)
            try:
                if isinstance(resume, Exception):  # raised on the loop (see _taker_for): handled below
                    raise resume
                await self._handle(delivery, queue, resume)
            except RECOVERABLE as exc:
                # Unsettled: end this session (if it is still the delivery's); closing the connection
                # returns the message to the queue. Never leave it holding a prefetch slot.
                self._end_session(delivery, f"could not settle a delivery: {_brief(exc)}")
            except Exception as exc:  # a bug of ours must not leave the message unsettled
                await self._settle_after_internal_error(delivery, queue, exc)
            finally:
                self._inflight.discard(task)

        return on_message

    def _taker_for(self, queue: str) -> Callable[[aiormq.abc.DeliveredMessage], None]:
        """The tap's callback (aio/tap.py): called on the loop as a delivery comes off the socket.

        A plain task proven instant (worker/inline.py) runs right here, and when it succeeded its
        reply and ack are written before this returns: no task, no loop turn in between. Anything
        else goes on in a task from where this stopped: a task that ran is never run again."""
        on_message = self._callback_for(queue)
        loop = asyncio.get_running_loop()

        def take(delivery: aiormq.abc.DeliveredMessage) -> None:
            try:
                resume = self._handle_now(delivery, queue)
            except Exception as exc:
                resume = exc
            if resume is not DONE:
                loop.create_task(on_message(delivery, resume))  # the loop holds it until it is in _inflight

        return take

    def _handle_now(self, delivery: aiormq.abc.DeliveredMessage, queue: str) -> Resume | Done:
        """What can be done without waiting: DONE, or where the task in on_message goes on from."""
        redelivered = bool(delivery.delivery.redelivered)
        if redelivered or not self._inline.has_inline or self._stopping.is_set():
            return None  # a redelivered message always runs on a thread (worker/inline.py)
        try:
            decoded = self._decode(delivery, queue)
        except PoisonMessage:
            return None  # on_message reports it
        message = decoded.prepared.message
        if decoded.prepared.task.is_async or not self._inline.runs_inline(message.task, redelivered):
            return decoded
        if message.expires_ms is not None and time.time() * 1000 > message.expires_ms:
            return decoded
        if log.isEnabledFor(logging.INFO):
            log.info("Received task: %s[%s]", message.task, message.id)
        ran = Ran(decoded, time.perf_counter(), self._run_inline(decoded.prepared))
        outcome = ran.attempt.outcome
        if not outcome.successful or self._stale(delivery):
            return ran
        if decoded.reply_to and not decoded.prepared.task.options.ignore_result:
            assert self._replies is not None
            body, properties = encode_result(outcome)
            if not self._replies.publish_now(decoded.reply_to, body, properties, outcome.task_id):
                return ran
        self._succeeded(ran)
        self._acks.ack(delivery.delivery.delivery_tag)  # type: ignore[union-attr]  # not stale: there are acks
        return DONE

    def _decode(self, delivery: aiormq.abc.DeliveredMessage, queue: str) -> Decoded:
        """The task a delivery asks for and where its reply goes; PoisonMessage if it cannot run."""
        props = delivery.header.properties
        reply_to = wire.text(props.reply_to)  # bytes when it was not UTF-8 (aio/wire.py)
        message = decode_task(
            delivery.body, props.headers, content_type=props.content_type, reply_to=reply_to, priority=props.priority
        )
        return Decoded(prepare(self.app, message, redelivered=bool(delivery.delivery.redelivered), queue=queue), reply_to)

    async def _handle(self, delivery: aiormq.abc.DeliveredMessage, queue: str, resume: Decoded | Ran | None) -> None:
        ran = resume if isinstance(resume, Ran) else await self._run(delivery, queue, resume)
        if ran is None:  # settled without running (poison, expired, stopping)
            return
        prepared, reply_to, attempt = ran.decoded.prepared, ran.decoded.reply_to, ran.attempt
        message = prepared.message
        if self._stale(delivery):
            log.info("Task %s[%s] finished after its connection was replaced; the broker redelivers it", message.task, message.id)
            return
        outcome = attempt.outcome
        if outcome.successful:
            self._succeeded(ran)
        else:
            elapsed = time.perf_counter() - ran.started
            decision = decide_for_task(prepared.task.options, retries=message.retries, error=attempt.error)
            if isinstance(decision, Retry):
                await self._copy.retry(delivery, queue, decision)
                log.warning(
                    "Task %s[%s] failed (%s: %s); retry %d in %.3fs",
                    message.task, message.id, outcome.exc_type, outcome.exc_message, decision.retries, decision.countdown,
                )
                await self._ack(delivery)
                return
            log.error(
                "Task %s[%s] failed in %.6fs: %s: %s", message.task, message.id, elapsed, outcome.exc_type, outcome.exc_message
            )
        if reply_to and not prepared.task.options.ignore_result:
            await self._reply(reply_to, outcome)
        if not outcome.successful:
            await self._copy.dead_letter(
                delivery,
                queue,
                reason=decision.reason,
                exc=(outcome.exc_type, outcome.exc_message, outcome.traceback),
            )
        await self._ack(delivery)

    async def _run(self, delivery: aiormq.abc.DeliveredMessage, queue: str, decoded: Decoded | None) -> Ran | None:
        """Decode (unless done already) and run the delivery's task; None if settled without running."""
        if decoded is None:
            try:
                decoded = self._decode(delivery, queue)
            except PoisonMessage as poison:
                await self._reject_poison(delivery, queue, poison, wire.text(delivery.header.properties.reply_to))
                return None
        message = decoded.prepared.message
        if self._stopping.is_set():
            await self._release(delivery)
            return None
        if message.expires_ms is not None and time.time() * 1000 > message.expires_ms:
            await self._reject_expired(delivery, queue, message.id, message.task, decoded.reply_to, decoded.prepared)
            return None
        if log.isEnabledFor(logging.INFO):
            log.info("Received task: %s[%s]", message.task, message.id)
        started = time.perf_counter()
        attempt = await self._execute(decoded.prepared, redelivered=bool(delivery.delivery.redelivered))
        if attempt is None:  # stopped before it could start
            await self._release(delivery)
            return None
        return Ran(decoded, started, attempt)

    @staticmethod
    def _succeeded(ran: Ran) -> None:
        if log.isEnabledFor(logging.INFO):
            message, value = ran.decoded.prepared.message, ran.attempt.outcome.value
            log.info("Task %s[%s] succeeded in %.6fs: %.200r", message.task, message.id, time.perf_counter() - ran.started, value)

    async def _execute(self, prepared: Prepared, redelivered: bool) -> Attempt | None:
        if prepared.task.is_async:
            return await run_async(prepared)
        if self._stopping.is_set():
            return None
        name = prepared.message.task
        if self._inline.runs_inline(name, redelivered):  # see worker/inline.py
            return self._run_inline(prepared)
        if self._threads is None:
            self._threads = ThreadHandoff(asyncio.get_running_loop(), run_sync, self.config.threads, self.name)
        threaded = await self._threads.submit(prepared)
        if threaded is not None:
            self._inline.ran_on_thread(name, threaded.seconds)
        return threaded

    def _run_inline(self, prepared: Prepared) -> Attempt:
        """A plain function on the loop, watched (worker/inline.py)."""
        name = prepared.message.task
        self._watchdog.enter(f"task {name}[{prepared.message.id}]")
        try:
            attempt = run_sync(prepared)
        finally:
            self._watchdog.leave()
        if self._inline.ran_inline(name, attempt.seconds):
            log.info("Task %s took %.1f ms on the event loop; it runs on a thread from now on", name, attempt.seconds * 1000)
        return attempt

    async def _reject_expired(
        self,
        delivery: aiormq.abc.DeliveredMessage,
        queue: str,
        task_id: str,
        task: str,
        reply_to: str | None,
        prepared: Prepared,
    ) -> None:
        reason = "expired: delivered after its expires time; not run"
        log.warning("Task %s[%s] %s", task, task_id, reason)
        if reply_to and not prepared.task.options.ignore_result:
            await self._reply(reply_to, failure(task_id, "TaskExpired", reason))
        await self._copy.dead_letter(delivery, queue, reason=reason)
        await self._ack(delivery)

    async def _reject_poison(
        self, delivery: aiormq.abc.DeliveredMessage, queue: str, poison: PoisonMessage, reply_to: str | None
    ) -> None:
        log.warning("dead-lettering a message from %s: %s", queue, poison.reason)
        if reply_to and poison.task_id:
            await self._reply(reply_to, failure(poison.task_id, poison.kind, poison.reason))
        await self._copy.dead_letter(delivery, queue, reason=poison.reason)
        await self._ack(delivery)

    # --- broker writes -----------------------------------------------------------------------

    async def _reply(self, reply_to: str, outcome: Outcome) -> None:
        body, properties = encode_result(outcome)
        assert self._replies is not None
        # Its own connection (worker/replies.py); sent before the ack is queued.
        await self._replies.publish(reply_to, body, properties, outcome.task_id)

    def _end_session(self, delivery: aiormq.abc.DeliveredMessage, reason: str) -> None:
        if not self._stale(delivery) and self._lost is not None and not self._lost.done():
            log.warning("%s; reconnecting (unacked messages return to the queue)", reason)
            self._lost.set_result(ConnectionError(reason))

    def _stale(self, delivery: aiormq.abc.DeliveredMessage) -> bool:
        """The delivery's channel was replaced while its task ran: the broker redelivers it, so
        publishing its copies or acking it here would only make duplicates."""
        return self._acks is None or delivery.channel is not self._acks.channel

    async def _settle_after_internal_error(self, delivery: aiormq.abc.DeliveredMessage, queue: str, exc: Exception) -> None:
        """Dead-letter with the reason and ack; failing that, reject without requeue (the queue's own
        dead-letter exchange, if any, takes it). Never leave the delivery holding a prefetch slot."""
        log.error("internal error handling a message from %s; dead-lettering it", queue, exc_info=exc)
        try:
            await self._copy.dead_letter(delivery, queue, reason=f"internal error handling this message: {type(exc).__name__}: {exc}"[:1000])
            await self._ack(delivery)
        except RECOVERABLE as again:  # the channel, not the message: it comes back after a reconnect
            self._end_session(delivery, f"could not dead-letter after an internal error: {_brief(again)}")
        except Exception as again:
            log.error("could not dead-letter it either (%s); rejecting it without requeue", _brief(again))
            await self._reject(delivery, requeue=False)

    @property
    def _copy(self) -> CopyPublisher:
        assert self._copies is not None, "dead letters and retries need a session"
        return self._copies

    async def _ack(self, delivery: aiormq.abc.DeliveredMessage) -> None:
        """Settle ``delivery``: its ack goes out with the others finished in this loop turn."""
        if self._stale(delivery):
            # Its channel died under us: the broker redelivers this message (at-least-once).
            log.warning("ack lost (channel closed); the message will be redelivered")
            return
        self._acks.ack(delivery.delivery.delivery_tag)

    async def _release(self, delivery: aiormq.abc.DeliveredMessage) -> None:
        await self._reject(delivery, requeue=True)

    async def _reject(self, delivery: aiormq.abc.DeliveredMessage, *, requeue: bool) -> None:
        try:
            await delivery.channel.basic_reject(delivery.delivery.delivery_tag, requeue=requeue)
        except RECOVERABLE:
            return  # the channel is gone: the broker requeues it anyway
        if not self._stale(delivery):
            self._acks.settled_on_wire(delivery.delivery.delivery_tag)  # type: ignore[union-attr]

def _brief(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    return f"{type(exc).__name__}: {exc}"[:200]
