"""The producer side of each system, run in a fresh interpreter per measurement.

    client.py publish SYSTEM --count N [--prefill]
    client.py rpc SYSTEM --count N
    client.py delay SYSTEM --count N --low S --high S

Configured by BENCH_* environment variables (see common.bench_env); prints one JSON line. A fresh
process per measurement keeps the peers' global state apart (Dramatiq's global broker, Celery's
current app) and lets the caller bound every measurement with a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

WARM = 200  # untimed sends first: connection set-up, declarations, first-call costs
WINDOW = 256  # sends in flight for the asyncio publishers
URL = os.environ["BENCH_URL"]
QUEUE = os.environ["BENCH_QUEUE"]
TASK = os.environ.get("BENCH_TASK")  # the task to send instead of the no-op (the I/O-bound scenario's)


def repeat(one: Callable[[], Any]) -> Callable[[int], None]:
    """``send(n)``: call ``one()`` n times."""

    def send(n: int) -> None:
        for _ in range(n):
            one()

    return send


def timed(count: int, send: Callable[[int], None]) -> float:
    send(min(WARM, count))
    start = time.perf_counter()
    send(count)
    return time.perf_counter() - start


async def windowed(count: int, one: Callable[[], Awaitable[Any]]) -> None:
    """``count`` sends with at most WINDOW in flight."""
    window = asyncio.Semaphore(WINDOW)

    async def guarded() -> None:
        async with window:
            await one()

    await asyncio.gather(*(guarded() for _ in range(count)))


def atimed(count: int, prefill: bool, setup: Callable[[], Awaitable[Callable[[int], Awaitable[None]]]],
           teardown: Callable[[], Awaitable[None]]) -> float:
    async def main() -> float:
        send = await setup()
        try:
            if not prefill:
                await send(min(WARM, count))
            start = time.perf_counter()
            await send(count)
            return time.perf_counter() - start
        finally:
            await teardown()

    return asyncio.run(main())


# --- publish ----------------------------------------------------------------------------------------


def publish_amqptasks(system: str, count: int, prefill: bool) -> float:
    import bench_amqptasks as m

    task = getattr(m, TASK) if TASK else m.anoop if system == "at_async_def" else m.noop

    one_by_one = repeat(task.delay)

    def batch(n: int) -> None:
        for start in range(0, n, 1000):
            m.app.send_many([task.s() for _ in range(min(1000, n - start))])

    if prefill:
        return _plain(count, batch)
    if system in ("at_sync", "at_batch"):
        return timed(count, one_by_one if system == "at_sync" else batch)

    async def setup() -> Callable[[int], Awaitable[None]]:
        if system == "at_async_many":
            async def many(n: int) -> None:
                for start in range(0, n, WINDOW):
                    await m.app.asend_many([task.s() for _ in range(min(WINDOW, n - start))])
            return many
        return lambda n: windowed(n, task.adelay)

    return atimed(count, prefill, setup, m.app.aclose)


def _plain(count: int, send: Callable[[int], None]) -> float:
    start = time.perf_counter()
    send(count)
    return time.perf_counter() - start


def publish_celery(count: int, prefill: bool) -> float:
    import bench_celery as m

    send = repeat(getattr(m, TASK or "noop").delay)
    return _plain(count, send) if prefill else timed(count, send)


def publish_dramatiq(count: int, prefill: bool) -> float:
    import bench_dramatiq as m

    send = repeat(getattr(m, TASK or "noop").send)
    try:
        return _plain(count, send) if prefill else timed(count, send)
    finally:
        m.broker.close()


def publish_faststream(count: int, prefill: bool) -> float:
    import bench_faststream as m

    async def setup() -> Callable[[int], Awaitable[None]]:
        await m.broker.connect()
        await m.broker.declare_queue(m.queue)
        return lambda n: windowed(n, lambda: m.broker.publish(b"", queue=QUEUE, persist=True))

    return atimed(count, prefill, setup, m.broker.stop)


def publish_taskiq(count: int, prefill: bool) -> float:
    import bench_taskiq as m

    async def setup() -> Callable[[int], Awaitable[None]]:
        await m.broker.startup()
        return lambda n: windowed(n, getattr(m, TASK or "noop").kiq)

    return atimed(count, prefill, setup, m.broker.shutdown)


# raw_*_same: the raw clients sending what amqptasks sends for noop.delay() (docs/protocol.md), so a
# ratio against them measures the client, and the ratio against the minimal `{}` adds the message.
SAME_MESSAGE = os.environ.get("BENCH_SAME_MESSAGE") == "1"


def ours_message() -> tuple[bytes, dict[str, Any]]:
    task_id = str(uuid.uuid4())
    headers = {"amqptasks": 1, "task": "bench_amqptasks.noop", "id": task_id}
    return b'{"args":[],"kwargs":{}}', {"message_id": task_id, "timestamp": int(time.time()), "headers": headers}


def publish_raw_pika(count: int, prefill: bool) -> float:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    if not prefill:
        channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def ours() -> None:  # raw_pika_same: the message noop.delay() sends, built by hand
        body, fields = ours_message()
        channel.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2, content_type="application/json", **fields),
                              mandatory=True)

    send = repeat(ours if SAME_MESSAGE else lambda: channel.basic_publish("", QUEUE, b"{}", props, mandatory=True))
    try:
        return _plain(count, send) if prefill else timed(count, send)
    finally:
        connection.close()


def publish_raw_aiopika(count: int, prefill: bool) -> float:
    import aio_pika

    state: dict[str, Any] = {}

    async def setup() -> Callable[[int], Awaitable[None]]:
        state["connection"] = connection = await aio_pika.connect(URL)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(QUEUE, durable=True)
        exchange = channel.default_exchange

        def one() -> Awaitable[Any]:
            body, fields = ours_message() if SAME_MESSAGE else (b"{}", {})
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json",
                                       **fields)
            return exchange.publish(message, QUEUE, mandatory=True)

        return lambda n: windowed(n, one)

    async def teardown() -> None:
        await state["connection"].close()

    return atimed(count, prefill, setup, teardown)


def publish(system: str, count: int, prefill: bool) -> dict[str, Any]:
    if system.startswith("at_"):
        seconds = publish_amqptasks(system, count, prefill)
    else:
        seconds = {
            "celery": publish_celery, "celery_confirm": publish_celery,
            "dramatiq": publish_dramatiq, "dramatiq_confirm": publish_dramatiq,
            "faststream": publish_faststream, "taskiq": publish_taskiq,
            "raw_pika": publish_raw_pika, "raw_aiopika": publish_raw_aiopika,
            "raw_pika_same": publish_raw_pika, "raw_aiopika_same": publish_raw_aiopika,
        }[system](count, prefill)
    return {"seconds": seconds, "rate": count / seconds}


# --- RPC round trips ----------------------------------------------------------------------------------


def rpc(system: str, count: int) -> dict[str, Any]:
    warm = min(50, count)
    latencies: list[float] = []
    if system == "at_async":
        import bench_amqptasks as m

        async def amain() -> None:
            for i in range(warm + count):
                start = time.perf_counter()
                result = await m.add.adelay(i, 1)
                assert await result.aget(timeout=10) == i + 1
                if i >= warm:
                    latencies.append(time.perf_counter() - start)
            await m.app.aclose()

        asyncio.run(amain())
    elif system == "faststream":
        import bench_faststream as m

        async def fmain() -> None:
            await m.broker.connect()
            for i in range(warm + count):
                start = time.perf_counter()
                reply = await m.broker.request({"x": i, "y": 1}, queue=QUEUE, timeout=10)
                assert await reply.decode() == i + 1
                if i >= warm:
                    latencies.append(time.perf_counter() - start)
            await m.broker.stop()

        asyncio.run(fmain())
    else:
        call = _sync_rpc(system)
        for i in range(warm + count):
            start = time.perf_counter()
            assert call(i) == i + 1
            if i >= warm:
                latencies.append(time.perf_counter() - start)
    return {"latencies_ms": [round(v * 1000, 4) for v in latencies]}


def _sync_rpc(system: str) -> Callable[[int], Any]:
    if system == "at_sync":
        import bench_amqptasks as m

        return lambda i: m.add.delay(i, 1).get(timeout=10)
    if system == "celery":
        import bench_celery as c

        return lambda i: c.add.delay(i, 1).get(timeout=10)
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    replies: dict[str, bytes] = {}
    channel.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, p, b: replies.__setitem__(p.correlation_id, b), auto_ack=True)
    confirm = os.environ.get("BENCH_CONFIRM") == "1"  # raw_pika_confirm: what a confirmed send costs
    if confirm:
        channel.confirm_delivery()

    def call(i: int) -> int:
        cid = uuid.uuid4().hex
        props = pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=cid, delivery_mode=2 if confirm else None)
        channel.basic_publish("", QUEUE, json.dumps([i, 1]).encode(), props, mandatory=confirm)
        deadline = time.monotonic() + 10
        while cid not in replies and time.monotonic() < deadline:
            connection.process_data_events(time_limit=1)
        x, y = json.loads(replies.pop(cid))  # the raw responder echoes the body: add here
        return int(x + y)

    return call


# --- delays -------------------------------------------------------------------------------------------


def delay(system: str, count: int, low: float, high: float) -> dict[str, Any]:
    rng = random.Random(7)
    countdowns = [rng.uniform(low, high) for _ in range(count)]
    if system == "at":
        import bench_amqptasks as m

        from amqptasks.errors import ConfigurationError

        try:
            for countdown in countdowns:
                m.late.apply_async(args=(time.time() + countdown,), countdown=countdown)
        except ConfigurationError as exc:
            return {"skipped": str(exc)}
    elif system == "celery":
        import bench_celery as c

        for countdown in countdowns:
            c.late.apply_async(args=(time.time() + countdown,), countdown=countdown)
    else:
        import bench_dramatiq as d

        for countdown in countdowns:
            d.late.send_with_options(args=(time.time() + countdown,), delay=int(countdown * 1000))
        d.broker.close()
    return {"sent": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["publish", "rpc", "delay"])
    parser.add_argument("system")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefill", action="store_true")
    parser.add_argument("--low", type=float, default=1.0)
    parser.add_argument("--high", type=float, default=5.0)
    args = parser.parse_args()
    if args.scenario == "publish":
        result = publish(args.system, args.count, args.prefill)
    elif args.scenario == "rpc":
        result = rpc(args.system, args.count)
    else:
        result = delay(args.system, args.count, args.low, args.high)
    print(json.dumps(result), flush=True)
    os._exit(0)  # peers' non-daemon threads (kombu, dramatiq) must not keep the process alive


if __name__ == "__main__":
    main()
