#!/usr/bin/env python
"""Validate the delay cascade (amqptasks/core/delays.py) against a real RabbitMQ.

For each radix (2 = the binary cascade, 16) and level-queue type (classic, quorum) it declares a
private cascade under ``exp.<random>.r<radix>-<type>``, plus targets shared by all runs (a direct
exchange, a topic exchange, a fanout exchange with two queues, a classic and a quorum queue reached
through the default exchange), publishes delayed messages through pika with publisher confirms
and mandatory=True, consumes the targets and reports lateness (arrival - due) min/p50/p99/max.

It asserts that nothing is early, lost or duplicated, that messages with the same due time keep
their order, that a 1-hour message waits in its level queue while a 1-second one passes it, and
that every message arrives with its target's exchange and routing key. It also shows: a quorum
(at-least-once) landing queue with TTL 0; what happens when the final hop is unroutable or the
landing queue was never declared (classic: gone; quorum: kept); the memory of the level queues;
and how fast 5000 messages due at the same moment drain through the cascade. Everything it
declared is deleted at the end, whatever happened.

    .venv/bin/python scripts/experiment_delay_cascade.py [--url URL] [--types classic,quorum] [--radix 2,16]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika

from amqptasks.core import delays
from amqptasks.core.topology import Topology

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
MGMT = "http://127.0.0.1:15672"


# --- declaring a Topology with pika ------------------------------------------------------------


@dataclass
class Declared:
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)


def declare(channel: pika.adapters.blocking_connection.BlockingChannel, topology: Topology, record: Declared) -> None:
    for ex in topology.exchanges.values():
        channel.exchange_declare(
            ex.name, ex.type, durable=ex.durable, auto_delete=ex.auto_delete, internal=ex.internal,
            arguments=dict(ex.arguments) or None,
        )
        record.exchanges.append(ex.name)
    for q in topology.queues.values():
        channel.queue_declare(
            q.name, durable=q.durable, exclusive=q.exclusive, auto_delete=q.auto_delete,
            arguments=q.declare_arguments() or None,
        )
        record.queues.append(q.name)
    for b in topology.bindings:
        if b.destination_type == "queue":
            channel.queue_bind(b.destination, b.source, b.routing_key, arguments=dict(b.arguments) or None)
        else:
            channel.exchange_bind(b.destination, b.source, b.routing_key, arguments=dict(b.arguments) or None)


def delete_all(url: str, record: Declared) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in record.queues:
            channel = connection.channel()
            channel.queue_delete(name)
            channel.close()
        for name in record.exchanges:
            channel = connection.channel()
            channel.exchange_delete(name)
            channel.close()
    finally:
        connection.close()


def mgmt_queue(url: str, name: str) -> dict:
    parts = urlsplit(url)
    vhost = quote(unquote(parts.path[1:]) or "/", safe="")
    request = urllib.request.Request(f"{MGMT}/api/queues/{vhost}/{quote(name, safe='')}")
    token = b64encode(f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def queue_depth(channel: pika.adapters.blocking_connection.BlockingChannel, name: str) -> int:
    return channel.queue_declare(name, passive=True).method.message_count


# --- consuming -------------------------------------------------------------------------------


class Collector(threading.Thread):
    """Consumes the target queues on its own connection; records (queue, case, seq, lateness ms)."""

    def __init__(self, url: str, queues: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.queues = url, queues
        self.arrivals: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=500)
            for name in self.queues:
                channel.basic_consume(name, self._on_message(name), auto_ack=True)
            self.ready.set()
            while not self.stop.is_set():
                connection.process_data_events(time_limit=0.05)
            connection.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def _on_message(self, queue: str):
        def callback(channel, method, properties, body) -> None:
            now_us = time.time_ns() // 1000
            headers = properties.headers or {}
            record = {
                "queue": queue,
                "case": headers.get("case"),
                "run": headers.get("run"),
                "seq": headers.get("seq"),
                "delay_ms": headers.get("delay_ms"),
                "lateness_ms": (now_us - headers["due_us"]) / 1000,
                "x_death": len(headers.get("x-death") or []),
                "routing_key": method.routing_key,
                "exchange": method.exchange,
            }
            with self.lock:
                self.arrivals.append(record)

        return callback

    def count(self, run: str) -> int:
        with self.lock:
            return sum(1 for a in self.arrivals if a["run"] == run)


# --- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    label: str
    exchange: str
    routing_key: str
    queues: tuple[str, ...]  # the target queues a message for it lands in


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values):4d}  min={min(values):7.2f}  p50={statistics.median(values):7.2f}  "
        f"p99={pct(values, 99):7.2f}  max={max(values):7.2f} ms"
    )


def digits(delay_ms: int, radix: int) -> list[tuple[int, int]]:
    """(level, digit) for the non-zero digits of ``delay_ms``, most significant first."""
    found, level = [], 0
    while delay_ms:
        delay_ms, digit = divmod(delay_ms, radix)
        if digit:
            found.append((level, digit))
        level += 1
    return found[::-1]


def first_queue(delay_ms: int, prefix: str, radix: int) -> str:
    """The level queue a message with ``delay_ms`` waits in first."""
    level, digit = digits(delay_ms, radix)[0]
    return delays.level_queue(level, prefix, digit, radix)


def last_queue(delay_ms: int, prefix: str, radix: int) -> str:
    """The level queue a message with ``delay_ms`` waits in last."""
    level, digit = digits(delay_ms, radix)[-1]
    return delays.level_queue(level, prefix, digit, radix)


def run_cascade(url: str, base: str, level_type: str, radix: int, destinations: list[Destination],
                collector: Collector, record: Declared, n_random: int, n_burst: int, rng: random.Random) -> dict:
    levels = delays.levels_for(radix)
    run = f"r{radix}-{level_type}"
    prefix = f"{base}.{run}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    started = time.monotonic()
    infrastructure = delays.delay_infrastructure(levels, prefix=prefix, queue_type=level_type, radix=radix)
    declare(channel, infrastructure, record)
    for dest in destinations:
        landing_type = "quorum" if dest.label in ("quorum-landing", "unroutable-qland") else "classic"
        declare(channel, delays.landing_for(dest.exchange, dest.routing_key, levels=levels, prefix=prefix,
                                            queue_type=landing_type), record)
    declare_s = time.monotonic() - started
    channel.confirm_delivery()
    entry = delays.entry_exchange(levels, prefix=prefix)
    expected: dict[tuple[str, int], int] = {}  # (case, seq) -> how many copies (fanout: 2)
    seq = 0

    def publish(dest: Destination, delay_ms: int, case: str) -> None:
        nonlocal seq
        seq += 1
        key = delays.delay_routing_key(delay_ms, dest.exchange, dest.routing_key, levels=levels, radix=radix)
        due_us = time.time_ns() // 1000 + delay_ms * 1000  # taken before the publish: due can only be late
        properties = pika.BasicProperties(
            delivery_mode=2,
            headers={"run": run, "case": case, "seq": seq, "delay_ms": delay_ms, "due_us": due_us},
        )
        channel.basic_publish(entry, key, b"{}", properties, mandatory=True)  # raises on nack/return
        expected[(case, seq)] = len(dest.queues)

    routable = [d for d in destinations if not d.label.startswith("unroutable")]
    # 1. fixed delays to every destination type
    for delay in (0, 1, 250, 1000, 3000):
        for dest in routable:
            publish(dest, delay, f"fixed-{delay}ms")
    # 2. random 0.1-5 s
    for _ in range(n_random):
        publish(rng.choice(routable), rng.randint(100, 5000), "random")
    # 3. order: a burst with the same delay (same due time within the burst) to one queue
    order_dest = next(d for d in destinations if d.label == "direct")
    order_seqs_start = seq + 1
    for _ in range(50):
        publish(order_dest, 1500, "order")
    # 4. a 1-hour message, then a 1 s one that must pass it
    classic_q = next(d for d in destinations if d.label == "classic-queue")
    publish(classic_q, 3_600_000, "hour")
    expected.pop(("hour", seq))
    publish(classic_q, 1000, "passes-hour")
    # 5. load: many messages, random 1-2 s, to one classic queue
    t0 = time.monotonic()
    for _ in range(n_burst):
        publish(classic_q, rng.randint(1000, 2000), "burst")
    burst_rate = n_burst / (time.monotonic() - t0) if n_burst else 0.0
    # 6. unroutable final hop (the target exchange has no binding for the key), classic and
    #    quorum (at-least-once) landing queue
    unroutables = [d for d in destinations if d.label.startswith("unroutable")]
    for dest in unroutables:
        publish(dest, 100, dest.label)
        expected.pop((dest.label, seq))
    # 7. a destination whose landing queue was never declared (the integration forgot it)
    seq += 1
    no_landing_key = delays.delay_routing_key(100, order_dest.exchange, "no.landing", levels=levels, radix=radix)
    properties = pika.BasicProperties(delivery_mode=2, headers={"run": run, "case": "no-landing", "seq": seq})
    channel.basic_publish(entry, no_landing_key, b"{}", properties, mandatory=True)
    # 8. baseline: straight to the target queue, no cascade (what the measurement itself costs)
    for _ in range(20):
        seq += 1
        due_us = time.time_ns() // 1000
        properties = pika.BasicProperties(
            delivery_mode=2, headers={"run": run, "case": "baseline", "seq": seq, "delay_ms": 0, "due_us": due_us}
        )
        channel.basic_publish("", classic_q.routing_key, b"{}", properties, mandatory=True)
        expected[("baseline", seq)] = 1

    total = sum(expected.values())
    deadline = time.monotonic() + 30
    while collector.count(run) < total and time.monotonic() < deadline:
        time.sleep(0.1)
        if collector.error:
            raise collector.error
    time.sleep(0.5)  # anything extra (duplicates) shows up too

    hour_level = first_queue(3_600_000, prefix, radix)
    hour_depth = queue_depth(channel, hour_level)
    time.sleep(5.5)  # the management API refreshes queue statistics every 5 s
    unroutable_depth = {}
    for dest in unroutables:
        landing = delays.landing_queue(dest.exchange, dest.routing_key, prefix)
        info = mgmt_queue(url, landing)
        fields = ("type", "messages", "messages_dlx", "message_bytes_dlx")
        unroutable_depth[dest.label] = {k: info.get(k) for k in fields if k in info}
    no_landing_queue = last_queue(100, prefix, radix)
    info = mgmt_queue(url, no_landing_queue)
    no_landing = {k: info.get(k) for k in ("messages", "messages_dlx") if k in info}
    memory = sum(mgmt_queue(url, name).get("memory", 0) for name in infrastructure.queues)
    level_depths = {name: queue_depth(channel, name) for name in infrastructure.queues}
    connection.close()

    with collector.lock:
        arrivals = [a for a in collector.arrivals if a["run"] == run]
    got: dict[tuple[str, int], int] = {}
    for a in arrivals:
        got[(a["case"], a["seq"])] = got.get((a["case"], a["seq"]), 0) + 1
    missing = {k: v - got.get(k, 0) for k, v in expected.items() if got.get(k, 0) < v}
    extra = {k: n - expected.get(k, 0) for k, n in got.items() if n > expected.get(k, 0)}
    early = [a for a in arrivals if a["lateness_ms"] < 0]
    order = [a["seq"] for a in arrivals if a["case"] == "order"]
    target_of = {queue: (d.exchange, d.routing_key) for d in destinations for queue in d.queues}
    routing_ok = all((a["exchange"], a["routing_key"]) == target_of[a["queue"]] for a in arrivals)
    return {
        "type": level_type,
        "run": run,
        "n_queues": len(infrastructure.queues),
        "n_exchanges": len(infrastructure.exchanges),
        "no_landing_queue": no_landing_queue,
        "radix": radix,
        "declare_s": declare_s,
        "arrivals": arrivals,
        "missing": missing,
        "extra": extra,
        "early": early,
        "order_kept": order == list(range(order_seqs_start, order_seqs_start + 50)),
        "hour_level": hour_level,
        "hour_depth": hour_depth,
        "other_level_depths": {k: v for k, v in level_depths.items() if v and k not in (hour_level, no_landing_queue)},
        "passes_hour": any(a["case"] == "passes-hour" for a in arrivals),
        "unroutable_landing_depth": unroutable_depth,
        "routing_ok": routing_ok,
        "burst_rate": burst_rate,
        "memory": memory,
        "no_landing": no_landing,
    }


def run_throughput(url: str, base: str, level_type: str, radix: int, dest: Destination, collector: Collector,
                   n: int) -> list[str]:
    """``n`` messages due at the same moment (delay 2000 ms = 6 level queues): how fast do they
    drain through the cascade? Published without per-message confirms, then one confirmed
    publish (confirms are in order, so it confirms the lot)."""
    if n <= 0:
        return []
    levels = delays.levels_for(radix)
    prefix = f"{base}.r{radix}-{level_type}"
    run = f"r{radix}-{level_type}-throughput"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    entry = delays.entry_exchange(levels, prefix=prefix)
    key = delays.delay_routing_key(2000, dest.exchange, dest.routing_key, levels=levels, radix=radix)
    t0 = time.time_ns() // 1000
    for i in range(n):
        properties = pika.BasicProperties(
            delivery_mode=2, headers={"run": run, "case": "throughput", "seq": i, "delay_ms": 2000,
                                      "due_us": time.time_ns() // 1000 + 2_000_000},
        )
        channel.basic_publish(entry, key, b"{}", properties)
    published_s = (time.time_ns() // 1000 - t0) / 1e6
    channel.confirm_delivery()
    channel.basic_publish(entry, key, b"{}", pika.BasicProperties(delivery_mode=2, headers={
        "run": run, "case": "throughput", "seq": n, "delay_ms": 2000, "due_us": time.time_ns() // 1000 + 2_000_000}))
    deadline = time.monotonic() + 60
    while collector.count(run) < n + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    connection.close()
    with collector.lock:
        arrivals = [a for a in collector.arrivals if a["run"] == run]
    late = [a["lateness_ms"] for a in arrivals]
    print(f"  throughput: {n + 1} messages published in {published_s:.2f} s, all due 2 s later; "
          f"arrived {len(arrivals)}; lateness {summary(late)}")
    return [] if len(arrivals) == n + 1 else [f"{run}: lost {n + 1 - len(arrivals)} messages"]


def report(result: dict) -> list[str]:
    problems: list[str] = []
    arrivals = result["arrivals"]
    print(f"\n=== radix {result['radix']}, {result['type']} level queues ({result['n_exchanges']} exchanges, "
          f"{result['n_queues']} level queues, landings: declared in {result['declare_s']:.2f} s)")
    by_case: dict[str, list[float]] = {}
    for a in arrivals:
        by_case.setdefault(a["case"], []).append(a["lateness_ms"])
    def order_key(case: str) -> tuple[bool, int, str]:
        fixed = case.startswith("fixed")
        return (not fixed, int(case.split("-")[1][:-2]) if fixed else 0, case)

    for case in sorted(by_case, key=order_key):
        print(f"  {case:14s} {summary(by_case[case])}")
    normal = [a["lateness_ms"] for a in arrivals if a["case"] not in ("burst", "baseline")]
    print(f"  {'ALL (no load)':14s} {summary(normal)}")
    landing_q = [a["lateness_ms"] for a in arrivals if a["queue"].endswith(".qland")]
    print(f"  {'quorum landing':14s} {summary(landing_q)}")
    print(f"  burst published at {result['burst_rate']:.0f} msg/s (one confirm per publish)")
    deaths = [a["x_death"] for a in arrivals if a["case"] == "random"]
    print(f"  x-death entries on arrival (random case): max {max(deaths) if deaths else 0}")
    print(f"  order kept for 50 same-delay messages: {result['order_kept']}")
    print(f"  1-hour message waiting in {result['hour_level']}: depth {result['hour_depth']}; "
          f"1 s message published after it arrived: {result['passes_hour']}")
    print(f"  unroutable final hop, landing queue afterwards: {result['unroutable_landing_depth']}")
    print(f"  no landing declared (100 ms message): its last level queue {result['no_landing_queue']} afterwards: "
          f"{result['no_landing']}")
    print(f"  memory of the level queues (management API): {result['memory'] / 1e6:.1f} MB")
    hops: dict[int, list[float]] = {}
    for a in arrivals:
        if a["case"] in ("random", "burst") or a["case"].startswith("fixed"):
            hops.setdefault(len(digits(a["delay_ms"], result["radix"])), []).append(a["lateness_ms"])
    print("  median lateness by number of level queues visited (non-zero digits): "
          + ", ".join(f"{n}:{statistics.median(v):.1f}" for n, v in sorted(hops.items())))
    if result["other_level_depths"]:
        print(f"  other level queues not empty: {result['other_level_depths']}")
    if result["missing"]:
        missing = result["missing"]
        problems.append(f"{result['run']}: {len(missing)} messages missing, e.g. {list(missing)[:5]}")
    kept = result["unroutable_landing_depth"].get("unroutable-qland", {}).get("messages")
    if not kept:
        problems.append(f"{result['run']}: the quorum landing queue did not keep the unroutable message ({kept})")
    if result["type"] == "quorum" and not result["no_landing"].get("messages"):
        problems.append(f"{result['run']}: the quorum level queue did not keep the message that had no landing")
    if result["extra"]:
        problems.append(f"{result['run']}: duplicates {list(result['extra'])[:5]}")
    if result["early"]:
        worst = min(a["lateness_ms"] for a in result["early"])
        problems.append(f"{result['run']}: {len(result['early'])} messages early (worst {worst:.2f} ms)")
    if not result["order_kept"]:
        problems.append(f"{result['run']}: same-due-time order not kept")
    if result["hour_depth"] != 1 or not result["passes_hour"]:
        problems.append(f"{result['run']}: the 1-hour message is not where expected or blocked the 1 s one")
    if not result["routing_ok"]:
        problems.append(f"{result['run']}: a message arrived with the wrong exchange/routing key")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--types", default="classic,quorum", help="level queue types to compare")
    parser.add_argument("--radix", default="2,16", help="radixes to compare (2 = the binary cascade)")
    parser.add_argument("--random", type=int, default=100, help="messages with a random 0.1-5 s delay")
    parser.add_argument("--burst", type=int, default=500, help="messages with a random 1-2 s delay, published at once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--throughput", type=int, default=5000, help="messages due at the same moment (drain test)")
    args = parser.parse_args()

    base = f"exp.{uuid.uuid4().hex[:8]}"
    record = Declared()
    rng = random.Random(args.seed)
    problems: list[str] = []
    print(f"prefix {base}; max delay {delays.max_delay_ms()} ms = {delays.max_delay_ms() / 86_400_000:.0f} days "
          f"(radix 2: {delays.levels_for(2)} levels, radix 16: {delays.levels_for(16)} levels)")
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    try:
        channel = connection.channel()
        q = lambda name: record.queues.append(name) or name  # noqa: E731
        x = lambda name: record.exchanges.append(name) or name  # noqa: E731
        direct, topic, fanout = x(f"{base}.direct"), x(f"{base}.topic"), x(f"{base}.fanout")
        channel.exchange_declare(direct, "direct", durable=True)
        channel.exchange_declare(topic, "topic", durable=True)
        channel.exchange_declare(fanout, "fanout", durable=True)
        qd, qt, qf1, qf2 = q(f"{base}.q.direct"), q(f"{base}.q.topic"), q(f"{base}.q.fanout1"), q(f"{base}.q.fanout2")
        qc, qq, ql = q(f"{base}.q.classic"), q(f"{base}.q.quorum"), q(f"{base}.q.qland")
        for name in (qd, qt, qf1, qf2, qc, ql):
            channel.queue_declare(name, durable=True)
        channel.queue_declare(qq, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(qd, direct, "k.direct")
        channel.queue_bind(qt, topic, "a.*")
        channel.queue_bind(qf1, fanout, "")
        channel.queue_bind(qf2, fanout, "")
        destinations = [
            Destination("direct", direct, "k.direct", (qd,)),
            Destination("topic", topic, "a.b", (qt,)),
            Destination("fanout", fanout, "", (qf1, qf2)),
            Destination("classic-queue", "", qc, (qc,)),
            Destination("quorum-queue", "", qq, (qq,)),
            Destination("quorum-landing", "", ql, (ql,)),
            Destination("unroutable", direct, "nobody.listens", ()),
            Destination("unroutable-qland", direct, "nobody.listens.either", ()),
        ]
        collector = Collector(args.url, [qd, qt, qf1, qf2, qc, qq, ql])
        collector.start()
        collector.ready.wait(10)
        if collector.error:
            raise collector.error
        classic_q = next(d for d in destinations if d.label == "classic-queue")
        for radix in (int(r) for r in args.radix.split(",")):
            for level_type in args.types.split(","):
                result = run_cascade(args.url, base, level_type, radix, destinations, collector, record, args.random,
                                     args.burst, rng)
                problems += report(result)
                problems += run_throughput(args.url, base, level_type, radix, classic_q, collector, args.throughput)
        collector.stop.set()
        collector.join(5)
    finally:
        if connection.is_open:
            connection.close()
        delete_all(args.url, record)
        print(f"\ndeleted {len(record.queues)} queues and {len(record.exchanges)} exchanges under {base}")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
