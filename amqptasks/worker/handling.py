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
from amqptasks.core.envelope import (
    Outcome,
    PoisonMessage,
    Properties,
    decode_task,
    encode_reply,
    encode_result,
    failure,
)
from amqptasks.core.retry import DeadLetter, Retry, decide_for_task
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


# slots, not frozen: built once or twice per delivery on the inline fast path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) measurably costs; nothing mutates them.
@dataclass(slots=True)
class Decoded:
    """A delivery's task, ready to run, and where its reply goes."""

    prepared: Prepared
    reply_to: str | None

    @property
    def wants_reply(self) -> bool:
        return self.prepared.wants_reply


@dataclass(slots=True)
class Ran:
    """A delivery's task that has run: what is left is to reply, ack, retry or dead-letter."""

    decoded: Decoded
    started: float  # perf_counter() when it started
    attempt: Attempt
    outcome: Outcome  # as the caller sees it: a result JSON cannot carry is a failure here
    reply: tuple[bytes, Properties] | None  # the encoded reply, when the caller waits for one


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
            except Exception as exc:  # handled in the task: on_message settles it
                resume = exc
            if resume is not DONE:
                loop.create_task(on_message(delivery, resume))  # noqa: RUF006 - the loop holds it until it is in _inflight

        return take

    def _handle_now(self, delivery: aiormq.abc.DeliveredMessage, queue: str) -> Resume | Done:
        """What can be done without waiting: DONE, or where the task in on_message goes on from.

        The same steps as :meth:`_handle`, in the same methods; only an opted-in plain task that
        succeeded and whose reply can be written at once is settled here."""
        if _redelivered(delivery) or not self._inline.has_inline or self._stopping.is_set():
            return None  # a redelivered message always runs on a thread (worker/inline.py)
        try:
            decoded = self._decode(delivery, queue)
        except PoisonMessage:
            return None  # on_message reports it
        prepared = decoded.prepared
        task = prepared.task
        if task.is_async or not task.options.inline or not self._inline.runs_inline(task.name, False):
            return decoded
        if _expired(prepared):
            return decoded  # on_message dead-letters it
        ran = self._ran(decoded, self._started(prepared), self._run_inline(prepared))
        if not ran.outcome.successful or self._stale(delivery) or not self._reply_now(ran):
            return ran
        self._succeeded(delivery, ran)
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
        message = ran.decoded.prepared.message
        if self._stale(delivery):
            log.info("Task %s[%s] finished after its connection was replaced; the broker redelivers it", message.task, message.id)
            return
        if ran.outcome.successful:
            if not self._reply_now(ran):
                await self._reply(ran)
            self._succeeded(delivery, ran)
        else:
            await self._failed(delivery, queue, ran)

    async def _run(self, delivery: aiormq.abc.DeliveredMessage, queue: str, decoded: Decoded | None) -> Ran | None:
        """Decode (unless done already) and run the delivery's task; None if settled without running."""
        if decoded is None:
            try:
                decoded = self._decode(delivery, queue)
            except PoisonMessage as poison:
                log.warning("dead-lettering a message from %s: %s", queue, poison.reason)
                reply_to = wire.text(delivery.header.properties.reply_to) if poison.task_id else None
                await self._not_run(delivery, queue, poison.reason, failure(poison.task_id or "", poison.kind, poison.reason), reply_to)
                return None
        prepared = decoded.prepared
        overran = self.overruns.reason_for(prepared.message.id) if _redelivered(delivery) else None
        if overran is not None:  # back after its run outlived the broker's consumer_timeout: never rerun
            log.error("Task %s[%s] %s", prepared.message.task, prepared.message.id, overran)
            reply_to = decoded.reply_to if decoded.wants_reply else None
            await self._not_run(delivery, queue, overran, failure(prepared.message.id, "ConsumerTimeout", overran), reply_to)
            return None
        if self._stopping.is_set():
            await self._release(delivery, queue)
            return None
        if _expired(prepared):
            reason = "expired: delivered after its expires time; not run"
            log.warning("Task %s[%s] %s", prepared.message.task, prepared.message.id, reason)
            reply_to = decoded.reply_to if decoded.wants_reply else None
            await self._not_run(delivery, queue, reason, failure(prepared.message.id, "TaskExpired", reason), reply_to)
            return None
        started = self._started(prepared)
        self.overruns.started(prepared.message.id)
        try:
            attempt = await self._execute(prepared, redelivered=_redelivered(delivery))
        finally:
            self.overruns.finished(prepared.message.id)
        if attempt is None:  # stopped before it could start
            await self._release(delivery, queue)
            return None
        return self._ran(decoded, started, attempt)

    @staticmethod
    def _started(prepared: Prepared) -> float:
        """The task starts now: log it, and return the clock its duration is measured from."""
        if log.isEnabledFor(logging.INFO):
            log.info("Received task: %s[%s]", prepared.message.task, prepared.message.id)
        return time.perf_counter()

    @staticmethod
    def _ran(decoded: Decoded, started: float, attempt: Attempt) -> Ran:
        """The outcome as the caller will see it, and its reply encoded (once, for either path)."""
        if not decoded.wants_reply:
            return Ran(decoded, started, attempt, attempt.outcome, None)
        outcome, body, properties = encode_reply(attempt.outcome)
        return Ran(decoded, started, attempt, outcome, (body, properties))

    def _succeeded(self, delivery: aiormq.abc.DeliveredMessage, ran: Ran) -> None:
        """Log a success (its reply is out) and ack it."""
        if log.isEnabledFor(logging.INFO):
            message, value = ran.decoded.prepared.message, ran.outcome.value
            log.info("Task %s[%s] succeeded in %.6fs: %.200r", message.task, message.id, time.perf_counter() - ran.started, value)
        self._ack(delivery)

    async def _failed(self, delivery: aiormq.abc.DeliveredMessage, queue: str, ran: Ran) -> None:
        """Retry it, or log it with its traceback, reply and dead-letter it; then ack."""
        prepared, outcome = ran.decoded.prepared, ran.outcome
        message = prepared.message
        decision: Retry | DeadLetter
        if ran.attempt.outcome.successful or ran.attempt.returned:
            # It ran and returned; only its result cannot reach the caller: running it again would
            # repeat its side effects for the same refusal.
            decision = DeadLetter(f"{outcome.exc_type}: {outcome.exc_message}")
        else:
            decision = decide_for_task(prepared.task.options, retries=message.retries, error=ran.attempt.error)
        if isinstance(decision, Retry):
            await self._copy.retry(delivery, queue, decision)
            log.warning(
                "Task %s[%s] failed (%s: %s); retry %d in %.3fs",
                message.task, message.id, outcome.exc_type, outcome.exc_message, decision.retries, decision.countdown,
            )
            self._ack(delivery)
            return
        elapsed = time.perf_counter() - ran.started
        trace = f"\n{outcome.traceback.rstrip()}" if outcome.traceback else ""
        log.error(
            "Task %s[%s] failed in %.6fs: %s: %s%s", message.task, message.id, elapsed, outcome.exc_type, outcome.exc_message, trace
        )
        if ran.reply is not None:
            await self._reply(ran)
        await self._copy.dead_letter(
            delivery, queue, reason=decision.reason, exc=(outcome.exc_type, outcome.exc_message, outcome.traceback)
        )
        self._ack(delivery)

    async def _not_run(
        self, delivery: aiormq.abc.DeliveredMessage, queue: str, reason: str, outcome: Outcome, reply_to: str | None
    ) -> None:
        """A delivery that will not run (poison, expired): its caller hears why, then dead-letter and ack."""
        if reply_to and outcome.task_id:
            body, properties = encode_result(outcome)
            await self._replies.publish(reply_to, body, properties, outcome.task_id)
        await self._copy.dead_letter(delivery, queue, reason=reason)
        self._ack(delivery)

    async def _execute(self, prepared: Prepared, redelivered: bool) -> Attempt | None:
        if prepared.task.is_async:
            return await run_async(prepared)
        if self._stopping.is_set():
            return None
        name = prepared.message.task
        opted_in = prepared.task.options.inline  # @app.task(inline=True); others never run on the loop
        if opted_in and self._inline.runs_inline(name, redelivered):  # see worker/inline.py
            return self._run_inline(prepared)
        if self._threads is None:
            self._threads = ThreadHandoff(asyncio.get_running_loop(), run_sync, self.config.threads, self.name)
        threaded = await self._threads.submit(prepared)
        if threaded is not None and opted_in:
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

    # --- broker writes -----------------------------------------------------------------------

    def _reply_now(self, ran: Ran) -> bool:
        """Write the reply if that needs no waiting (or none is wanted); False if :meth:`_reply` must."""
        if ran.reply is None:
            return True
        assert ran.decoded.reply_to is not None  # a reply is encoded only for a reply_to
        return self._replies.publish_now(ran.decoded.reply_to, *ran.reply, ran.outcome.task_id)

    async def _reply(self, ran: Ran) -> None:
        # Its own connection (worker/replies.py); sent before the ack is queued.
        assert ran.reply is not None and ran.decoded.reply_to is not None
        await self._replies.publish(ran.decoded.reply_to, *ran.reply, ran.outcome.task_id)

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
            self._ack(delivery)
        except RECOVERABLE as again:  # the channel, not the message: it comes back after a reconnect
            self._end_session(delivery, f"could not dead-letter after an internal error: {brief(again)}")
        except Exception as again:  # last resort: reject, never leave it unsettled
            log.error("could not dead-letter it either (%s); rejecting it without requeue", brief(again))
            await self._reject(delivery, requeue=False)

    @property
    def _copy(self) -> CopyPublisher:
        assert self._copies is not None, "dead letters and retries need a session"
        return self._copies

    def _ack(self, delivery: aiormq.abc.DeliveredMessage) -> None:
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
            self._ack(delivery)
            return
        await self._reject(delivery, requeue=True)

    async def _reject(self, delivery: aiormq.abc.DeliveredMessage, *, requeue: bool) -> None:
        try:
            await delivery.channel.basic_reject(tag_of(delivery), requeue=requeue)
        except RECOVERABLE:
            return  # the channel is gone: the broker requeues it anyway
        acks = self._acks
        if acks is not None and not self._stale(delivery):  # (not stale implies acks is not None)
            acks.settled_on_wire(tag_of(delivery))


def tag_of(delivery: aiormq.abc.DeliveredMessage) -> int:
    tag = cast(spec.Basic.Deliver, delivery.delivery).delivery_tag  # a consumer's deliveries are basic.deliver
    assert tag is not None  # always on the wire
    return tag


def _expired(prepared: Prepared) -> bool:
    expires_ms = prepared.message.expires_ms
    return expires_ms is not None and time.time() * 1000 > expires_ms


def _redelivered(delivery: aiormq.abc.DeliveredMessage) -> bool:
    return bool(cast(spec.Basic.Deliver, delivery.delivery).redelivered)


def brief(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    return f"{type(exc).__name__}: {exc}"[:200]
