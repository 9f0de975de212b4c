"""Experiments only (scripts/bench/experiment.py): candidate worker fixes, monkeypatched in.

``BENCH_PATCH=nowait``: acks without awaiting the socket drain (aiormq ``wait=False``).
``BENCH_PATCH=coalesce``: acks gathered per event-loop turn into one ``multiple=True`` ack of the
contiguous completed prefix (assumes every delivery is acked, as in the drain benchmark).
``BENCH_PATCH=handoff`` (or ``coalesce+handoff``): sync tasks go to the threads through one
SimpleQueue, and finished ones come back in batches: one loop wake-up per burst, not per task.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from typing import Any

from amqptasks.worker import consumer


async def _ack_nowait(self: consumer.Consumer, delivery: Any) -> None:
    try:
        await delivery.channel.basic_ack(delivery.delivery.delivery_tag, wait=False)
    except consumer.RECOVERABLE as exc:
        consumer.log.warning("ack lost (%s)", exc)


class _Acks:
    """Per channel: the lowest tag not acked yet, and the completed tags above it."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.next = 1
        self.done: set[int] = set()
        self.scheduled = False

    def flush(self) -> None:
        self.scheduled = False
        tag = self.next
        while tag in self.done:
            self.done.discard(tag)
            tag += 1
        if tag > self.next:
            self.next = tag
            asyncio.ensure_future(self.channel.basic_ack(tag - 1, multiple=True, wait=False))


async def _ack_coalesced(self: consumer.Consumer, delivery: Any) -> None:
    acks: _Acks | None = getattr(self, "_bench_acks", None)
    if acks is None or acks.channel is not delivery.channel:
        acks = self._bench_acks = _Acks(delivery.channel)  # type: ignore[attr-defined]
    acks.done.add(delivery.delivery.delivery_tag)
    if not acks.scheduled:
        acks.scheduled = True
        asyncio.get_running_loop().call_soon(acks.flush)


class _Handoff:
    """Threads fed by a SimpleQueue; results return to the loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int) -> None:
        self.loop = loop
        self.work: queue.SimpleQueue[tuple[Any, Any, asyncio.Future[Any]]] = queue.SimpleQueue()
        self.done: collections.deque[tuple[asyncio.Future[Any], Any]] = collections.deque()
        self.lock = threading.Lock()
        self.wake_pending = False
        for _ in range(threads):
            threading.Thread(target=self._run, daemon=True).start()

    def submit(self, fn: Any, arg: Any) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.work.put((fn, arg, future))
        return future

    def _run(self) -> None:
        while True:
            fn, arg, future = self.work.get()
            result = fn(arg)  # run_sync never raises: failures are outcomes
            with self.lock:
                self.done.append((future, result))
                wake, self.wake_pending = not self.wake_pending, True
            if wake:
                self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            batch, self.done = self.done, collections.deque()
            self.wake_pending = False
        for future, result in batch:
            if not future.done():
                future.set_result(result)


async def _execute_handoff(self: consumer.Consumer, prepared: Any) -> Any:
    if prepared.task.is_async:
        return await consumer.run_async(prepared)
    handoff: _Handoff | None = getattr(self, "_bench_handoff", None)
    if handoff is None:
        handoff = self._bench_handoff = _Handoff(asyncio.get_running_loop(), self.config.threads)  # type: ignore[attr-defined]
    if self._stopping.is_set():
        return None
    return await handoff.submit(consumer.run_sync, prepared)


def apply(mode: str) -> None:
    for part in mode.split("+"):
        if part == "handoff":
            consumer.Consumer._execute = _execute_handoff  # type: ignore[method-assign]
        else:
            consumer.Consumer._ack = {"nowait": _ack_nowait, "coalesce": _ack_coalesced}[part]  # type: ignore[method-assign]
