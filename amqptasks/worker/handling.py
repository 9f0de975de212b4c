"""One delivery, from the socket to its ack: decode, run, reply, retry or dead-letter.

I/O only: which task runs and what its outcome is comes from :mod:`amqptasks.worker.execute`; where
a dead letter goes comes from :mod:`amqptasks.core.deadletter`; whether a retry is due from
:mod:`amqptasks.core.retry`. The connection's life (consume, reconnect, stop) is
:mod:`amqptasks.worker.consumer`'s.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiormq
import aiormq.exceptions
from aiormq import spec

from amqptasks.aio import wire
from amqptasks.core.envelope import Outcome, PoisonMessage, decode_task, encode_result, failure
from amqptasks.core.retry import Retry, decide_for_task
from amqptasks.errors import BrokerUnavailable
from amqptasks.worker.acks import AckSender
from amqptasks.worker.config import WorkerConfig
from amqptasks.worker.copies import CopyPublisher
from amqptasks.worker.execute import Attempt, Prepared, prepare, run_async, run_sync
from amqptasks.worker.handoff import ThreadHandoff
from amqptasks.worker.inline import InlinePolicy, LoopWatchdog
from amqptasks.worker.overrun import Overruns
from amqptasks.worker.release import hand_back
from amqptasks.worker.replies import ReplyPublisher

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.worker")


@dataclass(frozen=True)
class Decoded:
    """A delivery's task, ready to run, and where its reply goes."""

    prepared: Prepared
    reply_to: str | None


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


class DeliveryHandler:
    """Handles the deliveries of one worker process, session after session (see :meth:`begin`)."""

    def __init__(self, app: App, config: WorkerConfig, name: str, stopping: asyncio.Event) -> None:
        self.app = app
        self.config = config
        self.name = name
        self._stopping = stopping
        self.inflight: set[asyncio.Task[Any]] = set()  # deliveries being handled in a task
        self._threads: ThreadHandoff[Prepared, Attempt] | None = None  # started with the first plain task
        self._inline = InlinePolicy(enabled=config.inline)  # plain tasks proven instant run on the loop
        self._watchdog = LoopWatchdog()
        self._replies = ReplyPublisher(app.settings, f"amqptasks worker {app.main} {name}")  # its own connection
        self._acks: AckSender | None = None  # the current consume channel's
        self._copies: CopyPublisher | None = None  # dead letters and retries, confirmed
        self._lost: asyncio.Future[Any] | None = None  # resolved to end the current session
        self.overruns = Overruns()  # tasks that outran the broker's consumer_timeout (worker/overrun.py)

    def begin(self, acks: AckSender, copies: CopyPublisher, lost: asyncio.Future[Any]) -> None:
        """A new session: its consume channel's acks, its confirmed channel, its end."""
        self._acks, self._copies, self._lost = acks, copies, lost

    def stop(self) -> None:
        """Stopping: plain tasks not started yet will not start."""
        if self._threads is not None:
            self._threads.stop()

    async def close(self) -> None:
        self.stop()
        await self._replies.close()

    def callback_for(self, queue: str) -> Any:
        """aiormq's consumer callback for ``queue``, and the task that goes on from :meth:`taker_for`."""

        async def on_message(delivery: aiormq.abc.DeliveredMessage, resume: Resume = None) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.inflight.add(task)
            try:
                if isinstance(resume, Exception):  # raised on the loop (see taker_for): handled below
                    raise resume
                await self._handle(delivery, queue, resume)
            except RECOVERABLE as exc:
                # Unsettled: end this session (if it is still the delivery's); closing the connection
                # returns the message to the queue. Never leave it holding a prefetch slot.
                self._end_session(delivery, f"could not settle a delivery: {brief(exc)}")
            except Exception as exc:  # a bug of ours must not leave the message unsettled
                await self._settle_after_internal_error(delivery, queue, exc)
            finally:
                self.inflight.discard(task)

        return on_message

    def taker_for(self, queue: str) -> Callable[[aiormq.abc.DeliveredMessage], None]:
        """The tap's callback (aio/tap.py): called on the loop as a delivery comes off the socket.

        A plain task proven instant (worker/inline.py) runs right here, and when it succeeded its
        reply is written before this returns and its ack settled (written with the others of this
        read, at the end of the loop turn): no task, no thread in between. Anything
        else goes on in a task from where this stopped: a task that ran is never run again."""
        on_message = self.callback_for(queue)
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
        redelivered = _redelivered(delivery)
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
            body, properties = encode_result(outcome)
            if not self._replies.publish_now(decoded.reply_to, body, properties, outcome.task_id):
                return ran
        self._succeeded(ran)
        assert self._acks is not None  # not stale: there are acks
        self._acks.ack(tag_of(delivery))
        return DONE

    def _decode(self, delivery: aiormq.abc.DeliveredMessage, queue: str) -> Decoded:
        """The task a delivery asks for and where its reply goes; PoisonMessage if it cannot run."""
        props = delivery.header.properties
        reply_to = wire.text(props.reply_to)  # text, whatever arrived (aio/wire.py)
        message = decode_task(
            delivery.body, props.headers, content_type=props.content_type, reply_to=reply_to, priority=props.priority
        )
        return Decoded(prepare(self.app, message, redelivered=_redelivered(delivery), queue=queue), reply_to)

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
        dead_letter_reason = ""
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
            dead_letter_reason = decision.reason
            log.error(
                "Task %s[%s] failed in %.6fs: %s: %s", message.task, message.id, elapsed, outcome.exc_type, outcome.exc_message
            )
        if reply_to and not prepared.task.options.ignore_result:
            await self._reply(reply_to, outcome)
        if not outcome.successful:
            await self._copy.dead_letter(
                delivery,
                queue,
                reason=dead_letter_reason,
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
        overran = self.overruns.reason_for(message.id) if _redelivered(delivery) else None
        if overran is not None:
            await self._reject_overrun(delivery, queue, decoded, overran)
            return None
        if self._stopping.is_set():
            await self._release(delivery, queue)
            return None
        if message.expires_ms is not None and time.time() * 1000 > message.expires_ms:
            await self._reject_expired(delivery, queue, message.id, message.task, decoded.reply_to, decoded.prepared)
            return None
        if log.isEnabledFor(logging.INFO):
            log.info("Received task: %s[%s]", message.task, message.id)
        started = time.perf_counter()
        self.overruns.started(message.id)
        try:
            attempt = await self._execute(decoded.prepared, redelivered=_redelivered(delivery))
        finally:
            self.overruns.finished(message.id)
        if attempt is None:  # stopped before it could start
            await self._release(delivery, queue)
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

    async def _reject_overrun(self, delivery: aiormq.abc.DeliveredMessage, queue: str, decoded: Decoded, reason: str) -> None:
        """Back after its run outlived the broker's consumer_timeout here: dead-letter, never rerun."""
        message = decoded.prepared.message
        log.error("Task %s[%s] %s", message.task, message.id, reason)
        if decoded.reply_to and not decoded.prepared.task.options.ignore_result:
            await self._reply(decoded.reply_to, failure(message.id, "ConsumerTimeout", reason))
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
            self._end_session(delivery, f"could not dead-letter after an internal error: {brief(again)}")
        except Exception as again:
            log.error("could not dead-letter it either (%s); rejecting it without requeue", brief(again))
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
        assert self._acks is not None  # not stale
        self._acks.ack(tag_of(delivery))

    async def _release(self, delivery: aiormq.abc.DeliveredMessage, queue: str) -> None:
        """Stopping before it started: a fresh copy back in the queue, then the ack, so that the
        stop does not count towards the queue's delivery limit (worker/release.py); else requeue."""
        # Only while the original can still be acked: else the copy would be a duplicate.
        if not self._stale(delivery) and not delivery.channel.is_closed and await hand_back(self._copy, delivery, queue):
            await self._ack(delivery)
            return
        await self._reject(delivery, requeue=True)

    async def _reject(self, delivery: aiormq.abc.DeliveredMessage, *, requeue: bool) -> None:
        try:
            await delivery.channel.basic_reject(tag_of(delivery), requeue=requeue)
        except RECOVERABLE:
            return  # the channel is gone: the broker requeues it anyway
        if not self._stale(delivery):
            self._acks.settled_on_wire(tag_of(delivery))  # type: ignore[union-attr]


def tag_of(delivery: aiormq.abc.DeliveredMessage) -> int:
    tag = cast(spec.Basic.Deliver, delivery.delivery).delivery_tag  # a consumer's deliveries are basic.deliver
    assert tag is not None  # always on the wire
    return tag


def _redelivered(delivery: aiormq.abc.DeliveredMessage) -> bool:
    return bool(cast(spec.Basic.Deliver, delivery.delivery).redelivered)


def brief(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    return f"{type(exc).__name__}: {exc}"[:200]
