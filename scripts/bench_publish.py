#!/usr/bin/env python
"""Publish throughput of amqptasks against raw pika / aio-pika, interleaved, one run.

    .venv/bin/python scripts/bench_publish.py [--url URL] [--repeats 10] [--results]

Each repeat runs every contender once, in a rotating order, on a private queue purged in between,
so drift of a shared machine hits all of them alike; the report gives the median rate per
contender and the median of the per-repeat ratios the project targets:

* sync single send (``add.delay``) vs raw pika ``BlockingConnection`` + ``confirm_delivery``
  publishing one message at a time                                            (target >= 0.9x)
* sync batch (``app.send_many``, pipelined confirms) vs that same raw loop     (target >= 3x)
* async sends (``await add.adelay`` x 256 in flight) vs raw aio-pika with 256 confirms in
  flight                                                                       (target >= 1.0x)

Each baseline runs twice: with a minimal message (two properties, no headers) and with the same
message amqptasks sends (headers, ids, direct reply-to; docs/protocol.md) — the second isolates
the library's overhead from the protocol's.

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
from typing import Any

import aio_pika
import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amqptasks import App

BODY = b'{"args":[1,2],"kwargs":{}}'
PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def rate(count: int, fn: Callable[[], object]) -> float:
    """Messages per second of one round."""
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
    raw_channel.basic_consume("amq.rabbitmq.reply-to", lambda *_: None, auto_ack=True)  # for same-message sends

    app = App("bench", broker=args.url)

    @app.task(queue=queue)
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(0, 0)  # connect and provision outside the timings
    loop = asyncio.new_event_loop()
    aio: dict[str, Any] = {}

    async def aio_setup() -> None:
        connection = await aio_pika.connect(args.url)
        aio["connection"] = connection
        aio["channel"] = channel = await connection.channel(publisher_confirms=True)
        await (await channel.get_underlay_channel()).basic_consume("amq.rabbitmq.reply-to", lambda _m: None, no_ack=True)
        await add.adelay(0, 0)

    loop.run_until_complete(aio_setup())

    def same_headers(task_id: str) -> dict[str, Any]:
        return {"amqptasks": 1, "task": add.name, "id": task_id, "retries": 0}

    # --- contenders: (messages per round, run one round) ---------------------------------------
    def raw_pika_minimal() -> None:
        for _ in range(args.single):
            raw_channel.basic_publish("", queue, BODY, PROPS, mandatory=True)

    def raw_pika_same_message() -> None:
        # What a hand-written pika producer of the same protocol message does (docs/protocol.md).
        for _ in range(args.single):
            task_id = str(uuid.uuid4())
            props = pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=task_id, correlation_id=task_id,
                reply_to="amq.rabbitmq.reply-to", timestamp=int(time.time()), headers=same_headers(task_id))
            raw_channel.basic_publish("", queue, BODY, props, mandatory=True)

    def ours_single() -> None:
        for _ in range(args.single):
            add.delay(1, 2)

    def ours_batch(chunk: int = 1000) -> None:
        for start in range(0, args.batch, chunk):
            app.send_many([add.s(1, 2) for _ in range(min(chunk, args.batch - start))])

    async def raw_aio(same_message: bool) -> None:
        exchange = aio["channel"].default_exchange
        window = asyncio.Semaphore(256)

        async def one() -> None:
            async with window:
                if same_message:
                    task_id = str(uuid.uuid4())
                    message = aio_pika.Message(
                        BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json",
                        message_id=task_id, correlation_id=task_id, reply_to="amq.rabbitmq.reply-to",
                        timestamp=time.time(), headers=same_headers(task_id))
                else:
                    message = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                               content_type="application/json")
                await exchange.publish(message, queue, mandatory=True)

        await asyncio.gather(*(one() for _ in range(args.batch)))

    async def ours_aio() -> None:
        window = asyncio.Semaphore(256)

        async def one() -> None:
            async with window:
                await add.adelay(1, 2)

        await asyncio.gather(*(one() for _ in range(args.batch)))

    async def ours_aio_many(chunk: int = 256) -> None:
        for start in range(0, args.batch, chunk):
            await app.asend_many([add.s(1, 2) for _ in range(min(chunk, args.batch - start))])

    contenders: dict[str, tuple[int, Callable[[], object]]] = {
        "raw pika single, minimal message": (args.single, raw_pika_minimal),
        "raw pika single, same message": (args.single, raw_pika_same_message),
        "amqptasks delay": (args.single, ours_single),
        "amqptasks send_many(1000)": (args.batch, ours_batch),
        "raw aio-pika 256 in flight, minimal": (args.batch, lambda: loop.run_until_complete(raw_aio(False))),
        "raw aio-pika 256 in flight, same msg": (args.batch, lambda: loop.run_until_complete(raw_aio(True))),
        "amqptasks adelay, 256 in flight": (args.batch, lambda: loop.run_until_complete(ours_aio())),
        "amqptasks asend_many(256)": (args.batch, lambda: loop.run_until_complete(ours_aio_many())),
    }
    comparisons = [  # (ours, baseline, target or None)
        ("amqptasks delay", "raw pika single, minimal message", 0.9),
        ("amqptasks delay", "raw pika single, same message", None),
        ("amqptasks send_many(1000)", "raw pika single, minimal message", 3.0),
        ("amqptasks send_many(1000)", "raw pika single, same message", None),
        ("amqptasks adelay, 256 in flight", "raw aio-pika 256 in flight, minimal", 1.0),
        ("amqptasks adelay, 256 in flight", "raw aio-pika 256 in flight, same msg", None),
        ("amqptasks asend_many(256)", "raw aio-pika 256 in flight, minimal", 1.0),
        ("amqptasks asend_many(256)", "raw aio-pika 256 in flight, same msg", None),
    ]
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    try:
        for repeat in range(args.repeats):
            # rotate the order each repeat so no contender always runs first or after the same one
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                admin_channel.queue_purge(queue)
                count, run = contenders[name]
                rates[name].append(rate(count, run))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{ours.split(' ')[1]}/{base.split(',')[0].replace('raw ', '')}{'*' if 'same' in base else ''} "
                f"{rates[ours][-1] / rates[base][-1]:.2f}" for ours, base, _ in comparisons), flush=True)
        print(f"\nmedian msgs/s over {args.repeats} interleaved repeats:")
        for name, values in rates.items():
            print(f"  {name:40s} {statistics.median(values):9,.0f}")
        print("\nratios (median of per-repeat ratios):")
        for ours, base, target in comparisons:
            ratio = statistics.median(o / b for o, b in zip(rates[ours], rates[base], strict=True))
            verdict = "" if target is None else f"(target >= {target}) {'ok' if ratio >= target else 'BELOW TARGET'}"
            print(f"  {ours:32s} / {base:40s} {ratio:5.2f}x {verdict}")
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

    def on_request(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_request)
    ready.set()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.1)
    connection.close()


def _round_trips(url: str, queue: str, count: int, sequential: int, direct: bool) -> tuple[float, float, float]:
    """(setup ms, pipelined round trips/s, sequential round-trip ms) for one way of receiving replies."""
    start = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    if direct:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    got: set[str] = set()
    channel.basic_consume(reply_to, lambda _c, _m, p, _b: got.add(p.correlation_id), auto_ack=True)
    setup = (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, BODY, pika.BasicProperties(reply_to=reply_to, correlation_id=uuid.uuid4().hex))
    while len(got) < count:
        connection.process_data_events(time_limit=0.05)
    pipelined = count / (time.perf_counter() - start)

    latencies = []
    for _ in range(sequential):
        correlation_id = uuid.uuid4().hex
        start = time.perf_counter()
        channel.basic_publish("", queue, BODY, pika.BasicProperties(reply_to=reply_to, correlation_id=correlation_id))
        while correlation_id not in got:
            connection.process_data_events(time_limit=0.05)
        latencies.append((time.perf_counter() - start) * 1000)
    connection.close()
    return setup, pipelined, statistics.median(latencies)


def bench_results(url: str, repeats: int, count: int = 5000, sequential: int = 300) -> None:
    queue = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_responder, args=(url, queue, ready, stop), daemon=True)
    thread.start()
    ready.wait(10)
    samples: dict[str, list[tuple[float, float, float]]] = {"direct reply-to": [], "exclusive reply queue": []}
    try:
        for repeat in range(repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            for direct in order:
                name = "direct reply-to" if direct else "exclusive reply queue"
                samples[name].append(_round_trips(url, queue, count, sequential, direct))
    finally:
        stop.set()
        thread.join(5)
    print(f"\nresults over RPC, raw pika + responder thread, median of {repeats} interleaved repeats:")
    print(f"  {'':24s} {'setup (connect..consume)':>26s} {f'{count} pipelined':>16s} {'one at a time':>16s}")
    for name, values in samples.items():
        setup = statistics.median(v[0] for v in values)
        pipelined = statistics.median(v[1] for v in values)
        latency = statistics.median(v[2] for v in values)
        print(f"  {name:24s} {setup:23.1f} ms {pipelined:10,.0f} rt/s {latency:13.2f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
