#!/usr/bin/env python
"""Publish throughput of amqptasks against raw pika / aio-pika, interleaved, one run.

    .venv/bin/python scripts/bench_publish.py [--url URL] [--repeats 5] [--results]

Each repeat runs every contender once, in turn, on a private queue purged in between, so drift of
a shared machine hits all of them alike; the report gives the median rate per contender and the
ratios the project targets:

* sync single send (``add.delay``) vs raw pika ``BlockingConnection`` + ``confirm_delivery``
  publishing one message at a time                                            (target >= 0.9x)
* sync batch (``app.send_many``, pipelined confirms) vs that same raw loop     (target >= 3x)
* async sends (``await add.adelay`` x 256 in flight) vs raw aio-pika with 256 confirms in
  flight                                                                       (target >= 1.0x)

``--results`` also measures the two ways of getting results over RPC (docs/protocol.md): direct
reply-to vs an exclusive auto-delete reply queue, with a raw pika responder thread.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amqptasks import App  # noqa: E402

BODY = b'{"args":[1,2],"kwargs":{}}'
PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def rate(count: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--single", type=int, default=500, help="messages per single-send round")
    parser.add_argument("--batch", type=int, default=5000, help="messages per batch / async round")
    parser.add_argument("--results", action="store_true", help="also compare direct reply-to with a reply queue")
    args = parser.parse_args()

    queue = f"bench.publish.{uuid.uuid4().hex[:8]}"
    admin = pika.BlockingConnection(pika.URLParameters(args.url))
    admin_channel = admin.channel()
    admin_channel.queue_declare(queue, durable=True)

    raw = pika.BlockingConnection(pika.URLParameters(args.url))
    raw_channel = raw.channel()
    raw_channel.confirm_delivery()

    app = App("bench", broker=args.url)

    @app.task(queue=queue)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(0, 0)  # connect and provision outside the timings
    loop = asyncio.new_event_loop()
    aio: dict[str, object] = {}

    async def aio_setup() -> None:
        connection = await aio_pika.connect(args.url)
        aio["connection"] = connection
        aio["channel"] = await connection.channel(publisher_confirms=True)
        await add.adelay(0, 0)

    loop.run_until_complete(aio_setup())

    def raw_single(n: int) -> None:
        for _ in range(n):
            raw_channel.basic_publish("", queue, BODY, PROPS, mandatory=True)

    def ours_single(n: int) -> None:
        for _ in range(n):
            add.delay(1, 2)

    def ours_batch(n: int, chunk: int = 1000) -> None:
        for start in range(0, n, chunk):
            app.send_many([add.s(1, 2) for _ in range(min(chunk, n - start))])

    async def raw_aio(n: int) -> None:
        exchange = aio["channel"].default_exchange  # type: ignore[attr-defined]
        window = asyncio.Semaphore(256)

        async def one() -> None:
            async with window:
                message = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json")
                await exchange.publish(message, queue, mandatory=True)

        await asyncio.gather(*(one() for _ in range(n)))

    async def ours_aio(n: int) -> None:
        window = asyncio.Semaphore(256)

        async def one() -> None:
            async with window:
                await add.adelay(1, 2)

        await asyncio.gather(*(one() for _ in range(n)))

    async def ours_aio_many(n: int, chunk: int = 256) -> None:
        for start in range(0, n, chunk):
            await app.asend_many([add.s(1, 2) for _ in range(min(chunk, n - start))])

    single = lambda n: rate(n, lambda: raw_single(n))  # noqa: E731
    pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        # name: (baseline, ours) — each repeat runs both, in alternating order, on a purged queue
        "sync single (delay) vs raw pika single": (
            lambda: single(args.single), lambda: rate(args.single, lambda: ours_single(args.single))),
        "sync batch (send_many) vs raw pika single": (
            lambda: single(args.single), lambda: rate(args.batch, lambda: ours_batch(args.batch))),
        "async adelay x256 in flight vs raw aio-pika 256": (
            lambda: rate(args.batch, lambda: loop.run_until_complete(raw_aio(args.batch))),
            lambda: rate(args.batch, lambda: loop.run_until_complete(ours_aio(args.batch)))),
        "async asend_many(256) vs raw aio-pika 256": (
            lambda: rate(args.batch, lambda: loop.run_until_complete(raw_aio(args.batch))),
            lambda: rate(args.batch, lambda: loop.run_until_complete(ours_aio_many(args.batch)))),
    }
    targets = {"sync single": 0.9, "sync batch": 3.0, "async adelay": 1.0, "async asend_many": 1.0}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
    try:
        for repeat in range(args.repeats):
            for name, (baseline, ours) in pairs.items():
                order = (baseline, ours) if repeat % 2 == 0 else (ours, baseline)
                measured = {}
                for contender in order:
                    admin_channel.queue_purge(queue)
                    measured[contender] = contender()
                samples[name].append((measured[baseline], measured[ours]))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{n.split(' vs ')[0]} {v[-1][1] / v[-1][0]:.2f}x" for n, v in samples.items()), flush=True)
        print(f"\nmedians over {args.repeats} interleaved repeats (msgs/s; ratio = median of paired ratios):")
        for name, values in samples.items():
            base = statistics.median(b for b, _ in values)
            ours_rate = statistics.median(o for _, o in values)
            ratio = statistics.median(o / b for b, o in values)
            target = next(t for key, t in targets.items() if name.startswith(key))
            verdict = "ok" if ratio >= target else "BELOW TARGET"
            print(f"  {name:50s} ours {ours_rate:8,.0f}  baseline {base:8,.0f}  {ratio:5.2f}x (target >= {target}) {verdict}")
        if args.results:
            bench_results(args.url, args.repeats)
    finally:
        loop.run_until_complete(app.aclose())
        loop.run_until_complete(aio["connection"].close())  # type: ignore[attr-defined]
        loop.close()
        app.close()
        admin_channel.queue_delete(queue)
        admin.close()
        raw.close()
    return 0


# --- results over RPC: direct reply-to vs an exclusive reply queue --------------------------------


def _responder(url: str, queue: str, ready: threading.Event, stop: threading.Event) -> None:
    """Reply to every request on ``queue`` with its body, like a worker would."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    channel.basic_qos(prefetch_count=500)

    def on_request(ch: pika.adapters.blocking_connection.BlockingChannel, method: object, props: pika.BasicProperties, body: bytes) -> None:
        ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    channel.basic_consume(queue, on_request)
    ready.set()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.1)
    connection.close()


def _round_trips(url: str, queue: str, count: int, direct: bool) -> tuple[float, float]:
    """(setup seconds, round trips/s) for ``count`` requests sent at once then all awaited."""
    start = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    if direct:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    got: set[str] = set()
    channel.basic_consume(reply_to, lambda _c, _m, p, _b: got.add(p.correlation_id), auto_ack=True)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, BODY, pika.BasicProperties(reply_to=reply_to, correlation_id=uuid.uuid4().hex))
    while len(got) < count:
        connection.process_data_events(time_limit=0.05)
    elapsed = time.perf_counter() - start
    connection.close()
    return setup, count / elapsed


def bench_results(url: str, repeats: int, count: int = 5000) -> None:
    queue = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_responder, args=(url, queue, ready, stop), daemon=True)
    thread.start()
    ready.wait(10)
    samples: dict[str, list[tuple[float, float]]] = {"direct reply-to": [], "exclusive reply queue": []}
    try:
        for _ in range(repeats):
            samples["direct reply-to"].append(_round_trips(url, queue, count, direct=True))
            samples["exclusive reply queue"].append(_round_trips(url, queue, count, direct=False))
    finally:
        stop.set()
        thread.join(5)
    print(f"\nresults over RPC ({count} requests sent, then all replies awaited; median of {repeats}):")
    for name, values in samples.items():
        setup = statistics.median(v[0] for v in values) * 1000
        throughput = statistics.median(v[1] for v in values)
        print(f"  {name:24s} setup {setup:6.1f} ms   {throughput:8,.0f} round trips/s")


if __name__ == "__main__":
    raise SystemExit(main())
