"""Broker-side delays without plugins: the delay cascade (radix 16 by default; binary also works).

RabbitMQ expires messages only at the head of a queue, so a single queue holding messages with
per-message TTLs would keep a 1-second message waiting behind a 1-day one. The cascade avoids that:
every queue holds messages that all share the *same* TTL, so head order is expiry order.

The default is radix 16 with 9 levels (any delay up to 16**9 - 1 ms ≈ 2.18 years): measured below,
it is about ten times cheaper for the broker than binary and less late. The binary form is the
easiest to explain, so here it is (unit: 1 ms; radix 2 with 36 levels, the same range):

* Level ``k`` (0 ≤ k < LEVELS) is a topic exchange ``<prefix>.<k>`` and a durable queue
  ``<prefix>.<k>`` with queue-level ``x-message-ttl = 2**k`` ms whose dead-letter exchange is level
  ``k-1``'s exchange; level 0 dead-letters to the delivery exchange ``<prefix>.deliver``. No
  ``x-dead-letter-routing-key`` is set on level queues: the dead-letter hop keeps the routing key.
* The routing key spells the delay in binary, most significant bit first, one word per level, then
  the destination id: ``b35.b34.….b0.<id>`` with words ``0``/``1``.
* Level ``k``'s exchange binds its own queue with ``1`` in bit ``k``'s word (``*`` before, ``#``
  after) and binds level ``k-1``'s *exchange* (exchange-to-exchange) with ``0`` there. A message
  published to the top exchange therefore falls through the levels whose bit is 0 at once and
  waits 2**k ms in every level whose bit is 1: total wait = the delay.
* The delivery exchange binds, per destination, the *final* exchange ``<prefix>.final``
  (exchange-to-exchange) with the exact pattern ``*.*.(LEVELS stars).<id>``, and the final exchange
  binds the destination with the same pattern:

  - a **queue** target (exchange ``""``, routing key = the queue name) is bound directly: the
    message arrives in the queue from ``<prefix>.deliver`` with the cascade routing key;
  - an **exchange** target is reached through a *landing* queue ``<prefix>.land.<id>`` with
    ``x-message-ttl: 0`` that dead-letters to the destination's exchange with the destination's
    routing key, so the message arrives there as if published there (direct, topic, fanout).

  ``<id>`` is 16 hex digits of sha1(``exchange\\0routing_key``) (for a queue target
  sha1(``\\x01queue``), so that the landing queues older versions bound to the delivery exchange
  never match new keys): routing keys stay 2*LEVELS + 16 bytes long whatever the target.
* **Nothing is parked.** The final exchange has the alternate exchange ``<prefix>.unroutable``
  (fanout) whose queue ``<prefix>.unroutable`` receives every message whose destination binding is
  gone when its delay ends (the queue was deleted: RabbitMQ removes its bindings with it; a landing
  queue was deleted). Such a message keeps its headers; ``amqptasks dlq list <prefix>.unroutable``
  shows "destination ... did not exist when the delay ended" (the ``delay-to`` header names it)
  and ``dlq replay`` sends a queue target's message to its queue once it exists again. Without it a
  quorum level queue's at-least-once dead-lettering would retry such a message for ever, invisible
  to ``basic.get``. A producer binds a queue target only when the queue exists (the bind itself
  is refused otherwise), which is how a delayed send to a missing queue raises
  ``UnroutableError`` at send time like an undelayed one. One case remains that no AMQP method can
  check without delivering a message: an *exchange* target that exists but routes the key
  nowhere; the landing queue then holds the message (``messages_dlx`` in the management API).

Nothing waits in a consumer, so ``consumer_timeout`` and worker memory are never involved.

The same code builds a cascade in any radix (``radix=16, levels=9`` has the same range): level
``k`` then has one queue per non-zero digit ``v``, ``<prefix>.<k>.<v>`` with TTL ``v * 16**k``, and
the key has one hex digit a level. Measured below, it is far cheaper for the broker.

Measured on this machine (RabbitMQ 3.10.8, Erlang 25, 2 busy cores; several runs of
``scripts/experiment_delay_cascade.py``; lateness = arrival at a consumer - due time, a direct
publish costs 0.5-2 ms of that):

* Nothing ever arrived early or twice, nothing was lost; same-delay messages kept their order; a
  1-hour message sat in level 21 while a 1 s message published after it went through; direct,
  topic and fanout exchanges and classic and quorum target queues all receive with their own
  exchange name and routing key.
* Lateness grows with the number of level queues a message waits in (each hop ≈ 1.5-2 ms classic,
  2-5 ms quorum). Binary, ~200 messages of 0-5 s: classic p50 12-21 / p99 18-48 ms, quorum p50
  16-38 / p99 31-90 ms (one noisy run: 180 ms). Radix 16: classic p50 5-6 / p99 11-13 ms, quorum
  p50 7-8 / p99 23-115 ms.
* Broker cost: every binary-cascade message is routed through all 36 topic exchanges, each match
  costing time proportional to the 37-word key (RabbitMQ 3.10's topic trie): ~3.5 ms of broker
  CPU per delayed message, so 3000-5000 messages due at once drained at only ~250-380 msg/s
  (classic and quorum alike). Radix 16 (10 exchanges, 10-word keys) drained them at 3-4.6k msg/s.
  Publishing itself is never slowed (the cost is paid in the dead-letter hops).

Level and landing queues are **quorum** by default (``LEVEL_QUEUE_TYPE``/``LANDING_QUEUE_TYPE``)
with ``x-dead-letter-strategy: at-least-once`` and ``x-overflow: reject-publish`` (RabbitMQ 3.10+;
pass ``queue_type="classic"`` for older brokers). Why, although classic queues are a few ms
faster: classic dead-lettering is at-most-once and *silent* — when a hop finds no route (a
landing queue never declared, a target binding removed) the delayed task vanishes, which the
experiment shows; a quorum at-least-once queue keeps such a message (``messages_dlx`` in the
management API) and retries it (after ~3 minutes in a probe) until a route exists; and, as
RabbitMQ documents at-least-once dead-lettering, a hop completes only once the next queue has
confirmed the message (not tested here: that needs a broker restart). The price is some memory
(36 quorum queues: ~3.5 MB; 135 for radix 16: ~12.5 MB) and a few ms of lateness.

Everything here is pure (no pika/aio-pika, no I/O). What the adapters must do:

* Declare ``delay_infrastructure()`` once, and ``landing_for(exchange, routing_key)`` for a
  destination before its first delayed publish (declaring again is a no-op; cache per
  connection). For a queue target check first that the queue exists (``core/preflight.py``).
* Publish to ``entry_exchange()`` with routing key ``delay_routing_key(delay_ms, exchange,
  routing_key)``, persistent, confirmed, ``mandatory=True``; put ``schedule.due_ms(...)`` in the ``eta``
  header. ``mandatory`` only proves the message entered the cascade: the last hop is a
  dead-letter, which no publisher sees (hence quorum landings). When ``schedule.delay_ms_for`` gives None
  or 0, publish straight to the target instead, where ``mandatory`` checks the real route.
* Never set the AMQP ``expiration`` property on a delayed message: a per-message TTL shorter than
  a level's would deliver it early. Task expiry is the ``expires`` header.
* The target receives the message with its own exchange and routing key, plus an ``x-death``
  entry per queue it waited in (reason ``expired``; up to LEVELS + 1). Those are not failures;
  strip ``x-death``/``x-first-death-*``/``x-last-death-*`` when republishing (a retry).
* The cascade measures relative time; ``eta`` is the producer's clock. A worker finding a task
  "early" by its own clock should allow for skew rather than delay it again.
"""

from __future__ import annotations

import hashlib

from amqptasks.core.topology import (
    MAX_NAME_BYTES,
    Binding,
    Exchange,
    Origin,
    Queue,
    Topology,
)

RANGE_MS = 2**36 - 1  # the longest delay wanted: ≈ 2.18 years (≥ 1 year with room to spare)
RADIX = 16  # ~10x cheaper for the broker than 2 and less late (measured above); same range
DELAY_EXCHANGE_PREFIX = "amqptasks.delay"
DELIVERY_SUFFIX = "deliver"
FINAL_SUFFIX = "final"
UNROUTABLE_SUFFIX = "unroutable"
LANDING_SUFFIX = "land"
DELIVERY_EXCHANGE = f"{DELAY_EXCHANGE_PREFIX}.{DELIVERY_SUFFIX}"
LEVEL_QUEUE_TYPE = "quorum"
LANDING_QUEUE_TYPE = "quorum"
QUEUE_TYPES = ("classic", "quorum")
DESTINATION_ID_LENGTH = 16
ORIGIN = Origin(file="<amqptasks delay infrastructure>")
MIN_LEVELS = 1
MAX_KEY_WORDS = 100  # levels; keeps routing keys (2 bytes a level + the id) under 255 bytes
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def levels_for(radix: int, range_ms: int = RANGE_MS) -> int:
    """The fewest levels whose cascade in ``radix`` expresses every delay up to ``range_ms``."""
    levels = 1
    while radix**levels - 1 < range_ms:
        levels += 1
    return levels


LEVELS = levels_for(RADIX)  # 36 in radix 2, 9 in radix 16


# --- names ------------------------------------------------------------------------------------


def _check_levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or not MIN_LEVELS <= levels <= MAX_KEY_WORDS:
        raise ValueError(f"levels must be an integer from {MIN_LEVELS} to {MAX_KEY_WORDS}, got {levels!r}")
    return levels


def _check_radix(radix: int) -> int:
    if isinstance(radix, bool) or not isinstance(radix, int) or not 2 <= radix <= len(DIGITS):
        raise ValueError(f"radix must be an integer from 2 to {len(DIGITS)}, got {radix!r}")
    return radix


def level_exchange(level: int, prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """Name of level ``level``'s exchange: ``<prefix>.<level>``."""
    return f"{prefix}.{level}"


def level_queue(level: int, prefix: str = DELAY_EXCHANGE_PREFIX, digit: int = 1, radix: int = RADIX) -> str:
    """Name of the queue holding messages whose digit at ``level`` is ``digit``.

    Radix 2: one queue a level, named like its exchange, ``<prefix>.<level>``.
    Larger radixes: ``<prefix>.<level>.<digit>``, one queue per non-zero digit.
    """
    if _check_radix(radix) == 2:
        return level_exchange(level, prefix)
    return f"{prefix}.{level}.{DIGITS[digit]}"


def delivery_exchange(prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """The exchange after level 0, routing by destination id to the landing queues."""
    return f"{prefix}.{DELIVERY_SUFFIX}"


def final_exchange(prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """The exchange binding every destination; its alternate exchange catches what none routes."""
    return f"{prefix}.{FINAL_SUFFIX}"


def unroutable_queue(prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """The queue (and fanout exchange) receiving delayed messages whose destination is gone."""
    return f"{prefix}.{UNROUTABLE_SUFFIX}"


def entry_exchange(levels: int = LEVELS, prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """The exchange every delayed message is published to: the top level's."""
    return level_exchange(_check_levels(levels) - 1, prefix)


def max_delay_ms(levels: int = LEVELS, radix: int = RADIX) -> int:
    """The largest delay the cascade can express, inclusive: ``radix**levels - 1`` ms."""
    largest: int = _check_radix(radix) ** _check_levels(levels) - 1  # int ** int is typed Any (a negative power is a float)
    return largest


def destination_id(exchange: str, routing_key: str) -> str:
    """A short stable id for the destination (exchange, routing key): 16 hex digits of sha1.

    A queue target (exchange ``""``) hashes ``\\x01<queue>``: older versions hashed
    ``\\0<queue>`` and bound a landing queue to the delivery exchange with it; a different id
    keeps such a leftover binding from routing new messages a second way."""
    if exchange == "":
        data = b"\x01" + routing_key.encode("utf-8")
    else:
        data = exchange.encode("utf-8") + b"\0" + routing_key.encode("utf-8")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:DESTINATION_ID_LENGTH]


def landing_queue(exchange: str, routing_key: str, prefix: str = DELAY_EXCHANGE_PREFIX) -> str:
    """Name of the landing queue for a destination: ``<prefix>.land.<id>``."""
    return f"{prefix}.{LANDING_SUFFIX}.{destination_id(exchange, routing_key)}"


def level_pattern(level: int, digit: int | str, levels: int = LEVELS) -> str:
    """The binding pattern on level ``level``'s exchange matching ``digit`` in that level's word:
    ``*`` for every word before it (most significant first), ``#`` after."""
    word = DIGITS[digit] if isinstance(digit, int) else digit
    return f"{'*.' * (levels - 1 - level)}{word}.#"


def landing_pattern(exchange: str, routing_key: str, levels: int = LEVELS) -> str:
    """The exact pattern binding a destination's landing queue to the delivery exchange."""
    return "*." * _check_levels(levels) + destination_id(exchange, routing_key)


# --- topology -------------------------------------------------------------------------------


def _check_queue_type(queue_type: str) -> str:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be 'classic' or 'quorum', got {queue_type!r}")
    return queue_type


def _queue(name: str, queue_type: str, ttl_ms: int, dlx: str, dlrk: str | None = None) -> Queue:
    """A durable queue holding messages ``ttl_ms`` then dead-lettering them to ``dlx``."""
    if queue_type == "quorum":
        # at-least-once dead-lettering (3.10+) needs reject-publish; without a length limit it
        # never rejects anything.
        return Queue(
            name=name,
            type="quorum",
            message_ttl_ms=ttl_ms,
            overflow="reject-publish",
            dead_letter_exchange=dlx,
            dead_letter_routing_key=dlrk,
            arguments={"x-dead-letter-strategy": "at-least-once"},
            origin=ORIGIN,
        )
    return Queue(
        name=name, message_ttl_ms=ttl_ms, dead_letter_exchange=dlx, dead_letter_routing_key=dlrk, origin=ORIGIN
    )


def delay_infrastructure(
    levels: int = LEVELS,
    *,
    prefix: str = DELAY_EXCHANGE_PREFIX,
    queue_type: str = LEVEL_QUEUE_TYPE,
    radix: int = RADIX,
) -> Topology:
    """The level exchanges and queues, the delivery exchange and all their bindings.

    Landing queues are per destination: see :func:`landing_for`. ``prefix`` lets tests and
    experiments run a private cascade next to the real one. ``radix`` > 2 gives each level one
    queue per non-zero digit ``v`` (TTL ``v * radix**level``); pass a matching ``levels``.
    """
    _check_levels(levels)
    _check_radix(radix)
    _check_queue_type(queue_type)
    exchanges: dict[str, Exchange] = {}
    queues: dict[str, Queue] = {}
    bindings: list[Binding] = []
    for level in range(levels - 1, -1, -1):
        name = level_exchange(level, prefix)
        lower = level_exchange(level - 1, prefix) if level > 0 else delivery_exchange(prefix)
        exchanges[name] = Exchange(name, type="topic", origin=ORIGIN)
        for digit in range(1, radix):
            queue = _queue(level_queue(level, prefix, digit, radix), queue_type, digit * radix**level, lower)
            queues[queue.name] = queue
            bindings.append(Binding(name, queue.name, "queue", level_pattern(level, digit, levels), origin=ORIGIN))
        bindings.append(Binding(name, lower, "exchange", level_pattern(level, 0, levels), origin=ORIGIN))
    deliver = delivery_exchange(prefix)
    exchanges[deliver] = Exchange(deliver, type="topic", origin=ORIGIN)
    final, unroutable = final_exchange(prefix), unroutable_queue(prefix)
    exchanges[final] = Exchange(final, type="topic", arguments={"alternate-exchange": unroutable}, origin=ORIGIN)
    exchanges[unroutable] = Exchange(unroutable, type="fanout", origin=ORIGIN)
    queues[unroutable] = Queue(name=unroutable, type=queue_type, origin=ORIGIN)
    bindings.append(Binding(unroutable, unroutable, "queue", "", origin=ORIGIN))
    return Topology(exchanges=exchanges, queues=queues, bindings=tuple(bindings))


def landing_for(
    exchange: str,
    routing_key: str,
    *,
    levels: int = LEVELS,
    prefix: str = DELAY_EXCHANGE_PREFIX,
    queue_type: str = LANDING_QUEUE_TYPE,
) -> Topology:
    """What routes delayed messages from the delivery exchange to one destination.

    The delivery exchange binds the final exchange with the destination's pattern, and the final
    exchange binds the target queue itself (a queue target, ``landing_for("", queue_name)``: no
    landing queue) or the destination's landing queue (an exchange target). Declare it (once)
    before publishing a delayed message for that destination; declaring it again is a no-op. A
    queue target's binding must only be declared when the queue exists (see the module doc).
    """
    _check_destination(exchange, routing_key)
    _check_queue_type(queue_type)
    pattern = landing_pattern(exchange, routing_key, levels)
    final = final_exchange(prefix)
    hop = Binding(delivery_exchange(prefix), final, "exchange", pattern, origin=ORIGIN)
    if exchange == "":
        return Topology(bindings=(hop, Binding(final, routing_key, "queue", pattern, origin=ORIGIN)))
    name = landing_queue(exchange, routing_key, prefix)
    queue = _queue(name, queue_type, 0, exchange, routing_key)
    return Topology(queues={name: queue}, bindings=(hop, Binding(final, name, "queue", pattern, origin=ORIGIN)))


def _check_destination(exchange: str, routing_key: str) -> None:
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        raise ValueError("a delay destination is an exchange name and a routing key (both str)")
    if exchange == "" and routing_key == "":
        raise ValueError("a delayed message for the default exchange needs the target queue's name as routing key")
    if len(exchange.encode("utf-8")) > MAX_NAME_BYTES or len(routing_key.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"exchange names and routing keys are at most {MAX_NAME_BYTES} bytes")


def _digits_of(value: int, levels: int, radix: int) -> list[str]:
    words = []
    for _ in range(levels):
        value, digit = divmod(value, radix)
        words.append(DIGITS[digit])
    return words[::-1]


def delay_routing_key(
    delay_ms: int, exchange: str, routing_key: str, *, levels: int = LEVELS, radix: int = RADIX
) -> str:
    """The routing key that carries ``delay_ms`` through the cascade to (exchange, routing_key).

    ``0 <= delay_ms <= max_delay_ms(levels)``; 0 (all digits 0) goes straight to the landing
    queue. Raises ValueError otherwise.
    """
    limit = max_delay_ms(levels, radix)
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int):
        raise ValueError(f"delay_ms must be an integer number of milliseconds, got {delay_ms!r}")
    if delay_ms < 0:
        raise ValueError(f"delay_ms must not be negative, got {delay_ms}")
    if delay_ms > limit:
        raise ValueError(f"delay_ms {delay_ms} exceeds the maximum delay {limit} ms ({levels} levels)")
    _check_destination(exchange, routing_key)
    return ".".join(_digits_of(delay_ms, levels, radix)) + "." + destination_id(exchange, routing_key)


def decode_routing_key(key: str, levels: int = LEVELS, radix: int = RADIX) -> tuple[int, str]:
    """(delay in ms, destination id) from a cascade routing key; for diagnostics and tests."""
    words = key.split(".")
    allowed = DIGITS[: _check_radix(radix)]
    if len(words) != levels + 1 or any(len(w) != 1 or w not in allowed for w in words[:levels]):
        raise ValueError(f"not a delay routing key for {levels} levels of radix {radix}: {key!r}")
    return int("".join(words[:levels]), radix), words[levels]
