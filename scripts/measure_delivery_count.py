"""What counts towards a quorum queue's delivery limit, measured on a live broker.

    python scripts/measure_delivery_count.py amqp://guest:guest@127.0.0.1:5673/%2F

For each way a consumer can give a message back (channel close, basic.reject / basic.nack with
requeue, basic.cancel then close, connection close), one message in a quorum queue with
``x-delivery-limit: 3`` and a dead-letter queue is taken and given back until it is dead-lettered
(or 6 rounds); printed: the ``x-delivery-count`` header seen at each delivery and the ``x-death``
reason. Also which queue arguments the broker accepts (``x-delivery-limit: -1``,
``x-max-priority`` on a quorum queue, ``x-consumer-timeout``). Declares ``t.measure.*`` queues
and deletes them.
"""

from __future__ import annotations

import sys
import time
import uuid

import pika

ROUNDS = 6


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def setup(url: str, prefix: str) -> tuple[str, str]:
    queue, dead = f"{prefix}.q", f"{prefix}.dead"
    with connect(url) as conn:
        ch = conn.channel()
        ch.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_declare(queue, durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 3,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
        })
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"m", pika.BasicProperties(delivery_mode=2, message_id="m"))
    return queue, dead


def take(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, consume: bool):
    if not consume:
        method, props, _ = ch.basic_get(queue)
        return method, props
    got: list = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append((m, p)))
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(0.1)
    return (got[0] if got else (None, None)) + (tag,)


def scenario(url: str, how: str) -> str:
    prefix = f"t.measure.{how}.{uuid.uuid4().hex[:6]}"
    queue, dead = setup(url, prefix)
    seen = []
    try:
        for _ in range(ROUNDS):
            conn = connect(url)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=10)
            result = take(ch, queue, consume=True)
            method, props = result[0], result[1]
            if method is None:
                conn.close()
                break
            seen.append((props.headers or {}).get("x-delivery-count"))
            if how == "reject":
                ch.basic_reject(method.delivery_tag, requeue=True)
                time.sleep(0.2)
                conn.close()
            elif how == "nack":
                ch.basic_nack(method.delivery_tag, requeue=True)
                time.sleep(0.2)
                conn.close()
            elif how == "channel-close":
                ch.close()
                conn.close()
            elif how == "cancel-then-close":
                ch.basic_cancel(result[2])
                ch.close()
                conn.close()
            elif how == "connection-close":
                conn.close()
            time.sleep(0.3)
        with connect(url) as conn:
            ch = conn.channel()
            method, props, _ = ch.basic_get(dead, auto_ack=True)
            death = None
            if method is not None:
                death = (props.headers or {}).get("x-first-death-reason")
            left = ch.queue_declare(queue, passive=True).method.message_count
        return f"{how:18s} x-delivery-count per delivery: {seen}; dead-lettered: {death or 'no'}; left in queue: {left}"
    finally:
        with connect(url) as conn:
            ch = conn.channel()
            ch.queue_delete(queue)
            ch.queue_delete(dead)


def accepts(url: str, arguments: dict) -> str:
    name = f"t.measure.args.{uuid.uuid4().hex[:6]}"
    conn = connect(url)
    try:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, arguments=arguments)
        ch.queue_delete(name)
        return "accepted"
    except pika.exceptions.ChannelClosed as exc:
        return f"refused: {exc.reply_code} {exc.reply_text}"
    finally:
        if conn.is_open:
            conn.close()


def priorities(url: str) -> str:
    """Publish priorities 0,5,9 (low first) to a quorum queue with x-max-priority; read the order."""
    name = f"t.measure.prio.{uuid.uuid4().hex[:6]}"
    with connect(url) as conn:
        ch = conn.channel()
        try:
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", "x-max-priority": 10})
        except pika.exceptions.ChannelClosed as exc:
            return f"refused: {exc.reply_text}"
        ch.confirm_delivery()
        for p in (0, 5, 9, 1):
            ch.basic_publish("", name, str(p).encode(), pika.BasicProperties(priority=p, delivery_mode=2))
        order = []
        while True:
            method, _, body = ch.basic_get(name, auto_ack=True)
            if method is None:
                break
            order.append(int(body))
        ch.queue_delete(name)
        return f"published 0,5,9,1 -> consumed {order}"


def main(url: str) -> None:
    with connect(url) as conn:
        version = conn._impl.server_properties.get("version")
    print(f"broker {version.decode() if isinstance(version, bytes) else version}")
    for how in ("channel-close", "reject", "nack", "cancel-then-close", "connection-close"):
        print(scenario(url, how))
    for label, args in (
        ("quorum x-delivery-limit -1", {"x-queue-type": "quorum", "x-delivery-limit": -1}),
        ("quorum x-max-priority 10", {"x-queue-type": "quorum", "x-max-priority": 10}),
        ("quorum x-consumer-timeout 5000", {"x-queue-type": "quorum", "x-consumer-timeout": 5000}),
        ("classic x-consumer-timeout 5000", {"x-consumer-timeout": 5000}),
    ):
        print(f"{label:32s} {accepts(url, args)}")
    print(f"quorum priority order            {priorities(url)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F")
