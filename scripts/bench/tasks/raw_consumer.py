"""Raw single-process consumers (the floor/ceiling references): pika or aio-pika.

    python raw_consumer.py pika|aiopika [--rpc]

Consumes BENCH_QUEUE with manual acks and prefetch BENCH_PREFETCH (default 32, amqptasks's
default per process). Without --rpc each message appends one byte to BENCH_DONE; with --rpc each
message is answered (its body) to its reply_to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aio_pika
import pika

URL = os.environ["BENCH_URL"]
QUEUE = os.environ["BENCH_QUEUE"]
DONE = os.environ.get("BENCH_DONE", os.devnull)
PREFETCH = int(os.environ.get("BENCH_PREFETCH", "32"))


def run_pika(rpc: bool) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_message(ch: pika.adapters.blocking_connection.BlockingChannel, method: pika.spec.Basic.Deliver,
                   props: pika.BasicProperties, body: bytes) -> None:
        if rpc:
            ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        else:
            with open(DONE, "ab") as f:
                f.write(b".")
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    signal.signal(signal.SIGTERM, lambda *_: channel.stop_consuming())
    channel.start_consuming()
    connection.close()


async def run_aiopika(rpc: bool) -> None:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(QUEUE, durable=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if rpc:
            reply = aio_pika.Message(message.body, correlation_id=message.correlation_id)
            await channel.default_exchange.publish(reply, routing_key=message.reply_to or "")
        else:
            with open(DONE, "ab") as f:
                f.write(b".")
        await message.ack()

    await queue.consume(on_message)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    kind, rpc = sys.argv[1], "--rpc" in sys.argv
    if kind == "pika":
        run_pika(rpc)
    else:
        asyncio.run(run_aiopika(rpc))
