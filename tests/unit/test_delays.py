"""The delay cascade, checked without a broker: routing keys, binding patterns, and a pure
simulation that follows the bindings and dead-letter settings from the entry exchange to the target,
adding up the TTLs on the way."""

from __future__ import annotations

import functools
import itertools
import random
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from amqptasks.core import delays
from amqptasks.core.delays import (
    DELIVERY_EXCHANGE,
    LEVELS,
    ORIGIN,
    RADIX,
    decode_routing_key,
    delay_infrastructure,
    delay_routing_key,
    destination_id,
    entry_exchange,
    landing_for,
    max_delay_ms,
)
from amqptasks.core.schedule import delay_ms_for, due_ms, expires_ms_for
from amqptasks.core.topology import (
    Binding,
    Exchange,
    Origin,
    Queue,
    Topology,
    merge,
    merge_all,
)
from amqptasks.errors import ConfigurationError, TopologyError

DAY_MS = 86_400_000
# The binary cascade (the original default): tests about it say so explicitly, whatever RADIX is.
BIN_RADIX = 2
BIN_LEVELS = delays.levels_for(BIN_RADIX)
HEX_DIGITS = "0123456789abcdef"
DESTINATIONS = [("", "celery"), ("tasks", "emails.send"), ("events", "a.b.c"), ("broadcast", "")]


# --- a tiny topic matcher (AMQP 0-9-1 rules: * one word, # zero or more words) ---------------


def topic_matches(pattern: str, key: str) -> bool:
    # Every word becomes ".word", so "*" is one such segment and "#" any number of them.
    return _compile(pattern).fullmatch("".join("." + word for word in key.split("."))) is not None


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    parts = {"*": r"\.[^.]*", "#": r"(?:\.[^.]*)*"}
    return re.compile("".join(parts.get(word, r"\." + re.escape(word)) for word in pattern.split(".")))


def _reference_match(pattern: str, key: str) -> bool:
    """The AMQP 0-9-1 rule, recursively (slow, obviously right): checks the regex version."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def test_topic_matcher_itself() -> None:
    assert topic_matches("a.*.c", "a.b.c") and not topic_matches("a.*.c", "a.c")
    assert topic_matches("a.#", "a") and topic_matches("a.#", "a.b.c") and topic_matches("#", "x")
    assert topic_matches("*.1.#", "0.1.x") and not topic_matches("*.1.#", "0.0.x")
    words = ["a", "b", "*", "#"]
    keys = [".".join(k) for k in itertools.product(["a", "b"], repeat=3)] + ["a", "b", "a.b", ""]
    for n in (1, 2, 3):
        for pattern in (".".join(p) for p in itertools.product(words, repeat=n)):
            for key in keys:
                assert topic_matches(pattern, key) is _reference_match(pattern, key), (pattern, key)


# --- simulation -------------------------------------------------------------------------------


def simulate(topology: Topology, exchange: str, key: str) -> tuple[int, str, str, list[str]]:
    """Follow ``key`` from ``exchange`` through the cascade. Returns (total TTL ms, final exchange,
    final routing key, queues visited). Fails if a step routes to no queue or to more than one."""
    total, visited = 0, []
    for _ in range(10_000):
        if exchange not in topology.exchanges:
            return total, exchange, key, visited  # left the cascade: a target exchange (or "")
        queues = _route(topology, exchange, key)
        assert len(queues) == 1, f"{key!r} at {exchange!r} reached {queues}"
        if queues[0] not in topology.queues:
            return total, "", queues[0], visited  # a queue target, bound to the final exchange itself
        queue = topology.queues[queues[0]]
        visited.append(queue.name)
        assert queue.message_ttl_ms is not None and queue.dead_letter_exchange is not None
        total += queue.message_ttl_ms
        exchange = queue.dead_letter_exchange
        key = queue.dead_letter_routing_key if queue.dead_letter_routing_key is not None else key
    raise AssertionError("the cascade loops")


_BY_SOURCE: dict[int, tuple[Topology, dict[str, list[Binding]]]] = {}


def _route(topology: Topology, exchange: str, key: str) -> list[str]:
    """Queues reached from ``exchange`` (following exchange-to-exchange bindings), as a broker would."""
    # Keyed by id() but keeping the topology itself: a freed topology's id may be reused.
    cached = _BY_SOURCE.get(id(topology))
    if cached is not None and cached[0] is topology:
        by_source = cached[1]
    else:
        by_source = {}
        for binding in topology.bindings:
            by_source.setdefault(binding.source, []).append(binding)
        _BY_SOURCE[id(topology)] = (topology, by_source)
    found: list[str] = []
    pending, seen = [exchange], set()
    while pending:
        source = pending.pop()
        if source in seen:
            continue
        seen.add(source)
        assert topology.exchanges[source].type == "topic"
        for binding in by_source.get(source, ()):
            if topic_matches(binding.routing_key, key):
                if binding.destination_type == "exchange":
                    pending.append(binding.destination)
                else:
                    found.append(binding.destination)
    return found


def landing_hops(exchange: str, routing_key: str) -> list[str]:
    """The queue a message waits in (0 ms) after the levels: an exchange target's landing queue."""
    return [delays.landing_queue(exchange, routing_key)] if exchange else []


def cascade(levels: int, radix: int, queue_type: str = "quorum") -> Topology:
    parts = [delay_infrastructure(levels, queue_type=queue_type, radix=radix)]
    parts += [landing_for(ex, rk, levels=levels, queue_type=queue_type) for ex, rk in DESTINATIONS]
    return merge_all(parts)


def sample_delays(limit: int, rng: random.Random, n: int = 300) -> list[int]:
    special = {0, 1, 2, 3, limit, limit - 1, limit // 2, 1000, 60_000, 3_600_000, DAY_MS, 365 * DAY_MS}
    special |= {2**k for k in range(64)} | {2**k - 1 for k in range(1, 64)} | {16**k for k in range(16)}
    values = {v for v in special if 0 <= v <= limit}
    values |= {rng.randint(0, limit) for _ in range(n)}
    values |= {rng.randint(0, 10_000) for _ in range(n // 3)}
    return sorted(values)


@pytest.fixture(scope="module")
def binary() -> Topology:
    return cascade(BIN_LEVELS, BIN_RADIX)


@pytest.fixture(scope="module")
def hexadecimal() -> Topology:
    """Radix 16, 9 levels: the default configuration (checked in test_hexadecimal_fixture_is_the_default)."""
    return cascade(delays.levels_for(16), radix=16)


def test_hexadecimal_fixture_is_the_default(hexadecimal: Topology) -> None:
    assert RADIX == 16 and LEVELS == delays.levels_for(16) == 9
    default = merge_all([delay_infrastructure(), *(landing_for(ex, rk) for ex, rk in DESTINATIONS)])
    assert default == hexadecimal


def test_total_ttl_equals_the_requested_delay_binary(binary: Topology) -> None:
    rng = random.Random(1)
    for i, delay in enumerate(sample_delays(max_delay_ms(BIN_LEVELS, BIN_RADIX), rng)):
        exchange, routing_key = DESTINATIONS[i % len(DESTINATIONS)]
        key = delay_routing_key(delay, exchange, routing_key, levels=BIN_LEVELS, radix=BIN_RADIX)
        total, final_exchange, final_key, visited = simulate(binary, entry_exchange(BIN_LEVELS), key)
        assert total == delay, (delay, visited)
        assert (final_exchange, final_key) == (exchange, routing_key)
        # one level queue per 1-bit, then an exchange target's landing queue (a queue target has none)
        assert visited[delay.bit_count():] == landing_hops(exchange, routing_key)


def test_total_ttl_equals_the_requested_delay_default(hexadecimal: Topology) -> None:
    # Everything at its default (radix 16, 9 levels); the fixture is the default topology.
    rng = random.Random(4)
    for i, delay in enumerate(sample_delays(max_delay_ms(), rng)):
        exchange, routing_key = DESTINATIONS[i % len(DESTINATIONS)]
        key = delay_routing_key(delay, exchange, routing_key)
        total, final_exchange, final_key, visited = simulate(hexadecimal, entry_exchange(), key)
        assert total == delay, (delay, visited)
        assert (final_exchange, final_key) == (exchange, routing_key)
        # one level queue per non-zero hex digit (most significant first, named by the digit),
        # then an exchange target's landing queue
        digits = format(delay, f"0{LEVELS}x")
        expected = [f"amqptasks.delay.{LEVELS - 1 - pos}.{d}" for pos, d in enumerate(digits) if d != "0"]
        assert visited == [*expected, *landing_hops(exchange, routing_key)], delay


def test_total_ttl_equals_the_requested_delay_radix_16(hexadecimal: Topology) -> None:
    levels = delays.levels_for(16)
    rng = random.Random(2)
    for delay in sample_delays(max_delay_ms(levels, 16), rng):
        key = delay_routing_key(delay, "tasks", "emails.send", levels=levels, radix=16)
        total, final_exchange, final_key, visited = simulate(hexadecimal, entry_exchange(levels), key)
        assert (total, final_exchange, final_key) == (delay, "tasks", "emails.send")
        assert len(visited) == sum(1 for d in format(delay, "x") if d != "0") + 1


@pytest.mark.parametrize(("levels", "radix"), [(1, 2), (5, 2), (4, 3), (3, 10)])
def test_every_delay_of_small_cascades(levels: int, radix: int) -> None:
    topology = cascade(levels, radix, queue_type="classic")
    for delay in range(max_delay_ms(levels, radix) + 1):
        key = delay_routing_key(delay, "", "celery", levels=levels, radix=radix)
        total, exchange, routing_key, _ = simulate(topology, entry_exchange(levels), key)
        assert (total, exchange, routing_key) == (delay, "", "celery")


def test_earlier_queues_never_hold_longer_ttls_than_the_delay_left(binary: Topology) -> None:
    # A message waits in decreasing TTLs: most significant bit first.
    key = delay_routing_key(3_600_000, "", "celery", levels=BIN_LEVELS, radix=BIN_RADIX)
    _, _, _, visited = simulate(binary, entry_exchange(BIN_LEVELS), key)
    ttls = [binary.queues[name].message_ttl_ms for name in visited]
    assert ttls == sorted(ttls, reverse=True) and ttls[-1] == 2**7  # 1 h = ...10000000 in binary
    assert visited[0] == delays.level_queue(21, radix=BIN_RADIX) == "amqptasks.delay.21"  # 2**21 ≤ 1 h < 2**22


def test_earlier_queues_never_hold_longer_ttls_than_the_delay_left_default(hexadecimal: Topology) -> None:
    # Most significant hex digit first: 1 h = 0x36ee80 ms.
    key = delay_routing_key(3_600_000, "", "celery")
    _, _, _, visited = simulate(hexadecimal, entry_exchange(), key)
    ttls = [hexadecimal.queues[name].message_ttl_ms for name in visited]
    assert ttls == sorted(ttls, reverse=True)
    assert ttls == [3 * 16**5, 6 * 16**4, 14 * 16**3, 14 * 16**2, 8 * 16]  # no landing queue for a queue
    assert visited[0] == delays.level_queue(5, digit=3) == "amqptasks.delay.5.3"  # 3 * 16**5 ≤ 1 h < 4 * 16**5


# --- routing keys and patterns ----------------------------------------------------------------


def test_routing_key_spells_the_delay_in_binary_most_significant_bit_first() -> None:
    key = delay_routing_key(5, "", "celery", levels=BIN_LEVELS, radix=BIN_RADIX)
    words = key.split(".")
    assert len(words) == BIN_LEVELS + 1
    assert words[:BIN_LEVELS] == ["0"] * (BIN_LEVELS - 3) + ["1", "0", "1"]
    assert words[-1] == destination_id("", "celery")
    assert decode_routing_key(key, BIN_LEVELS, BIN_RADIX) == (5, destination_id("", "celery"))
    assert delay_routing_key(0, "", "celery", levels=BIN_LEVELS, radix=BIN_RADIX) == "0." * BIN_LEVELS + destination_id(
        "", "celery"
    )
    longest = max_delay_ms(BIN_LEVELS, BIN_RADIX)
    assert delay_routing_key(longest, "", "celery", levels=BIN_LEVELS, radix=BIN_RADIX).startswith("1." * BIN_LEVELS)


def test_default_routing_key_spells_the_delay_in_hex_most_significant_digit_first() -> None:
    key = delay_routing_key(0x2F5, "", "celery")
    words = key.split(".")
    assert len(words) == LEVELS + 1 == 10
    assert words[:LEVELS] == ["0"] * (LEVELS - 3) + ["2", "f", "5"]
    assert words[-1] == destination_id("", "celery")
    assert decode_routing_key(key) == (0x2F5, destination_id("", "celery"))
    assert delay_routing_key(0, "", "celery") == "0." * LEVELS + destination_id("", "celery")
    assert delay_routing_key(max_delay_ms(), "", "celery") == "f." * LEVELS + destination_id("", "celery")
    rng = random.Random(5)
    for delay in sample_delays(max_delay_ms(), rng):
        words = delay_routing_key(delay, "tasks", "k").split(".")
        assert len(words) == LEVELS + 1
        assert all(len(word) == 1 and word in HEX_DIGITS for word in words[:LEVELS])
        assert "".join(words[:LEVELS]) == format(delay, f"0{LEVELS}x")
        assert words[-1] == destination_id("tasks", "k")


def test_routing_key_stays_short_whatever_the_destination() -> None:
    key = delay_routing_key(max_delay_ms(BIN_LEVELS, BIN_RADIX), "x" * 255, "y" * 255, levels=BIN_LEVELS, radix=BIN_RADIX)
    assert len(key.encode()) == 2 * BIN_LEVELS + 16 < 255
    default = delay_routing_key(max_delay_ms(), "x" * 255, "y" * 255)
    assert len(default.encode()) == 2 * LEVELS + 16 == 34


def test_level_patterns_look_at_exactly_their_own_bit() -> None:
    rng = random.Random(3)
    longest = max_delay_ms(BIN_LEVELS, BIN_RADIX)
    for level in range(BIN_LEVELS):
        ones, zeros = delays.level_pattern(level, 1, BIN_LEVELS), delays.level_pattern(level, 0, BIN_LEVELS)
        samples = [0, longest, 1 << level, (1 << level) - 1] + [rng.randint(0, longest) for _ in range(20)]
        for delay in samples:
            key = delay_routing_key(delay, "tasks", "k", levels=BIN_LEVELS, radix=BIN_RADIX)
            bit = (delay >> level) & 1
            assert topic_matches(ones, key) is (bit == 1)
            assert topic_matches(zeros, key) is (bit == 0)


def test_default_level_patterns_look_at_exactly_their_own_digit() -> None:
    rng = random.Random(6)
    for level in range(LEVELS):
        patterns = [delays.level_pattern(level, digit) for digit in range(16)]
        assert patterns == [f"{'*.' * (LEVELS - 1 - level)}{d}.#" for d in HEX_DIGITS]
        unit = 16**level
        samples = [0, max_delay_ms(), unit, unit - 1, 15 * unit] + [rng.randint(0, max_delay_ms()) for _ in range(20)]
        for delay in samples:
            key = delay_routing_key(delay, "tasks", "k")
            digit = (delay // unit) % 16
            assert [topic_matches(pattern, key) for pattern in patterns] == [d == digit for d in range(16)]


def test_landing_pattern_matches_only_its_destination() -> None:
    # the default (radix 16)
    pattern = delays.landing_pattern("tasks", "emails.send")
    assert pattern == "*." * LEVELS + destination_id("tasks", "emails.send")
    assert topic_matches(pattern, delay_routing_key(12345, "tasks", "emails.send"))
    assert not topic_matches(pattern, delay_routing_key(12345, "tasks", "emails.other"))
    assert not topic_matches(pattern, "x." + delay_routing_key(1, "tasks", "emails.send"))
    # binary
    binary = delays.landing_pattern("tasks", "emails.send", BIN_LEVELS)
    assert binary == "*." * BIN_LEVELS + destination_id("tasks", "emails.send")

    def bin_key(delay: int, exchange: str, routing_key: str) -> str:
        return delay_routing_key(delay, exchange, routing_key, levels=BIN_LEVELS, radix=BIN_RADIX)

    assert topic_matches(binary, bin_key(12345, "tasks", "emails.send"))
    assert not topic_matches(binary, bin_key(12345, "tasks", "emails.other"))
    assert not topic_matches(binary, "x." + bin_key(1, "tasks", "emails.send"))
    # a pattern never matches the other cascade's keys (different word counts)
    assert not topic_matches(pattern, bin_key(12345, "tasks", "emails.send"))
    assert not topic_matches(binary, delay_routing_key(12345, "tasks", "emails.send"))


def test_destination_id_is_stable_short_and_unambiguous() -> None:
    assert destination_id("", "celery") == destination_id("", "celery")
    assert re.fullmatch(r"[0-9a-f]{16}", destination_id("", "celery"))
    assert destination_id("a", "b.c") != destination_id("a.b", "c")
    assert destination_id("ab", "") != destination_id("a", "b")


def test_destination_id_known_value() -> None:
    import hashlib

    assert destination_id("tasks", "k") == hashlib.sha1(b"tasks\0k").hexdigest()[:16]


def test_max_delay_covers_more_than_a_year() -> None:
    assert BIN_LEVELS == delays.levels_for(2) == 36 and LEVELS == delays.levels_for(16) == 9
    assert max_delay_ms(BIN_LEVELS, BIN_RADIX) == 2**BIN_LEVELS - 1
    assert max_delay_ms(BIN_LEVELS, BIN_RADIX) >= 365 * DAY_MS
    # the default: radix 16
    assert max_delay_ms() == 16**9 - 1 == 16**LEVELS - 1
    assert max_delay_ms() >= 365 * DAY_MS
    assert max_delay_ms(delays.levels_for(16), 16) == max_delay_ms()


@pytest.mark.parametrize(
    "config", [pytest.param({}, id="default"), pytest.param({"levels": BIN_LEVELS, "radix": BIN_RADIX}, id="binary")]
)
@pytest.mark.parametrize("bad", [-1, "max+1", 1.5, True, "10", None])
def test_delay_routing_key_rejects_bad_delays(bad: object, config: dict[str, int]) -> None:
    if bad == "max+1":
        bad = max_delay_ms(**config) + 1
    with pytest.raises(ValueError):
        delay_routing_key(bad, "", "celery", **config)  # type: ignore[arg-type]


def test_delay_routing_key_rejects_bad_destinations() -> None:
    with pytest.raises(ValueError, match="queue's name"):
        delay_routing_key(10, "", "")
    with pytest.raises(ValueError, match="255 bytes"):
        delay_routing_key(10, "x" * 256, "k")
    with pytest.raises(ValueError):
        delays.delay_infrastructure(0)
    with pytest.raises(ValueError):
        delays.delay_infrastructure(queue_type="stream")
    with pytest.raises(ValueError):
        landing_for("", "celery", queue_type="lazy")


def test_decode_routing_key_rejects_other_keys() -> None:
    # binary
    with pytest.raises(ValueError):
        decode_routing_key("celery", BIN_LEVELS, BIN_RADIX)
    with pytest.raises(ValueError):
        decode_routing_key("2." * BIN_LEVELS + "abc", BIN_LEVELS, BIN_RADIX)
    # the default (radix 16): "2" is a digit there, "g" is not
    with pytest.raises(ValueError):
        decode_routing_key("celery")
    with pytest.raises(ValueError):
        decode_routing_key("g." * LEVELS + "abc")
    # neither cascade accepts the other's keys
    with pytest.raises(ValueError):
        decode_routing_key(delay_routing_key(5, "", "celery", levels=BIN_LEVELS, radix=BIN_RADIX))
    with pytest.raises(ValueError):
        decode_routing_key(delay_routing_key(5, "", "celery"), BIN_LEVELS, BIN_RADIX)


# --- the topology fragments -------------------------------------------------------------------



def assert_level_queue(queue: Queue, level: int, *, ttl_ms: int) -> None:
    """A level queue: durable quorum, holds for ``ttl_ms``, then dead-letters one level down
    (or to delivery) at least once, keeping the routing key."""
    assert queue.durable and queue.message_ttl_ms == ttl_ms
    assert queue.dead_letter_exchange == (f"amqptasks.delay.{level - 1}" if level else DELIVERY_EXCHANGE)
    assert queue.dead_letter_routing_key is None  # the hop keeps the routing key
    args = queue.declare_arguments()
    assert args["x-queue-type"] == "quorum"
    assert args["x-dead-letter-strategy"] == "at-least-once" and args["x-overflow"] == "reject-publish"
    assert "x-dead-letter-routing-key" not in args

FINAL = "amqptasks.delay.final"
UNROUTABLE = "amqptasks.delay.unroutable"
SAFETY_NET = (FINAL, UNROUTABLE)


def assert_safety_net(topology: Topology) -> None:
    """The final exchange's alternate exchange (fanout) feeds the unroutable queue."""
    assert topology.exchanges[FINAL].type == "topic"
    assert dict(topology.exchanges[FINAL].arguments) == {"alternate-exchange": UNROUTABLE}
    assert topology.exchanges[UNROUTABLE].type == "fanout" and topology.queues[UNROUTABLE].durable
    assert Binding(UNROUTABLE, UNROUTABLE, "queue", "") in topology.bindings


def test_infrastructure_entities() -> None:
    topology = delay_infrastructure(BIN_LEVELS, radix=BIN_RADIX)
    assert entry_exchange(BIN_LEVELS) == "amqptasks.delay.35"
    assert DELIVERY_EXCHANGE == "amqptasks.delay.deliver"
    assert set(topology.exchanges) == {f"amqptasks.delay.{k}" for k in range(BIN_LEVELS)} | {DELIVERY_EXCHANGE, *SAFETY_NET}
    assert set(topology.queues) == {f"amqptasks.delay.{k}" for k in range(BIN_LEVELS)} | {UNROUTABLE}
    assert all(e.type == "topic" and e.durable and not e.auto_delete for e in topology.exchanges.values() if e.name != UNROUTABLE)
    for k in range(BIN_LEVELS):
        assert_level_queue(topology.queues[f"amqptasks.delay.{k}"], k, ttl_ms=2**k)
    assert_safety_net(topology)
    assert len(topology.bindings) == 2 * BIN_LEVELS + 1
    exchange_bindings = [b for b in topology.bindings if b.destination_type == "exchange"]
    assert len(exchange_bindings) == BIN_LEVELS
    everything = [*topology.exchanges.values(), *topology.queues.values(), *topology.bindings]
    assert all(entity.origin == ORIGIN for entity in everything)
    assert str(ORIGIN) == "<amqptasks delay infrastructure>"


def test_default_infrastructure_entities() -> None:
    topology = delay_infrastructure()
    assert topology == delay_infrastructure(9, radix=16)
    assert entry_exchange() == "amqptasks.delay.8"
    assert set(topology.exchanges) == {f"amqptasks.delay.{k}" for k in range(LEVELS)} | {DELIVERY_EXCHANGE, *SAFETY_NET}
    levels = {f"amqptasks.delay.{k}.{d}" for k in range(LEVELS) for d in HEX_DIGITS[1:]}
    assert set(topology.queues) == levels | {UNROUTABLE}
    assert len(levels) == 15 * LEVELS == 135
    assert all(e.type == "topic" and e.durable and not e.auto_delete for e in topology.exchanges.values() if e.name != UNROUTABLE)
    assert_safety_net(topology)
    for k in range(LEVELS):
        for digit in range(1, 16):
            name = f"amqptasks.delay.{k}.{HEX_DIGITS[digit]}"
            assert delays.level_queue(k, digit=digit) == name
            assert_level_queue(topology.queues[name], k, ttl_ms=digit * 16**k)
    # per level: one binding per non-zero digit to its queue, one for 0 to the level below
    assert len(topology.bindings) == 16 * LEVELS + 1 == 145
    queue_bindings = [b for b in topology.bindings if b.destination_type == "queue" and b.source != UNROUTABLE]
    exchange_bindings = [b for b in topology.bindings if b.destination_type == "exchange"]
    assert len(queue_bindings) == 15 * LEVELS and len(exchange_bindings) == LEVELS
    assert {(b.source, b.destination, b.routing_key) for b in queue_bindings} == {
        (f"amqptasks.delay.{k}", f"amqptasks.delay.{k}.{d}", f"{'*.' * (LEVELS - 1 - k)}{d}.#")
        for k in range(LEVELS)
        for d in HEX_DIGITS[1:]
    }
    assert {(b.source, b.destination, b.routing_key) for b in exchange_bindings} == {
        (f"amqptasks.delay.{k}", f"amqptasks.delay.{k - 1}" if k else DELIVERY_EXCHANGE, f"{'*.' * (LEVELS - 1 - k)}0.#")
        for k in range(LEVELS)
    }
    everything = [*topology.exchanges.values(), *topology.queues.values(), *topology.bindings]
    assert all(entity.origin == ORIGIN for entity in everything)


def test_classic_infrastructure_has_no_quorum_arguments() -> None:
    queue = delay_infrastructure(BIN_LEVELS, queue_type="classic", radix=BIN_RADIX).queues["amqptasks.delay.3"]
    assert queue.declare_arguments() == {"x-message-ttl": 8, "x-dead-letter-exchange": "amqptasks.delay.2"}
    default = delay_infrastructure(queue_type="classic").queues["amqptasks.delay.3.5"]
    assert default.declare_arguments() == {"x-message-ttl": 5 * 16**3, "x-dead-letter-exchange": "amqptasks.delay.2"}


def test_prefix_moves_every_name() -> None:
    binary = merge(
        delay_infrastructure(BIN_LEVELS, prefix="t.x", radix=BIN_RADIX),
        landing_for("", "q", levels=BIN_LEVELS, prefix="t.x"),
    )
    default = merge(delay_infrastructure(prefix="t.x"), landing_for("", "q", prefix="t.x"))
    for topology in (binary, default):
        names = [*topology.exchanges, *topology.queues]
        names += [b.source for b in topology.bindings] + [b.destination for b in topology.bindings if b.destination != "q"]
        assert all(name.startswith("t.x.") for name in names)
    assert entry_exchange(BIN_LEVELS, prefix="t.x") == "t.x.35"
    assert entry_exchange(prefix="t.x") == "t.x.8"


def test_landing_queue_dead_letters_to_the_destination() -> None:
    topology = landing_for("events", "a.b")
    name = f"amqptasks.delay.land.{destination_id('events', 'a.b')}"
    assert list(topology.queues) == [name] and not topology.exchanges
    queue = topology.queues[name]
    assert queue.declare_arguments() == {
        "x-queue-type": "quorum",
        "x-message-ttl": 0,
        "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "events",
        "x-dead-letter-routing-key": "a.b",
        "x-dead-letter-strategy": "at-least-once",
    }
    pattern = "*." * LEVELS + destination_id("events", "a.b")
    assert topology.bindings == (
        Binding(DELIVERY_EXCHANGE, FINAL, "exchange", pattern),
        Binding(FINAL, name, "queue", pattern),
    )
    # the binary cascade's landing binding has one star per binary level; the queue is the same
    binary = landing_for("events", "a.b", levels=BIN_LEVELS)
    assert binary.queues == topology.queues
    bin_pattern = "*." * BIN_LEVELS + destination_id("events", "a.b")
    assert binary.bindings == (
        Binding(DELIVERY_EXCHANGE, FINAL, "exchange", bin_pattern),
        Binding(FINAL, name, "queue", bin_pattern),
    )
    classic = landing_for("events", "a.b", queue_type="classic").queues[name]
    assert classic.declare_arguments() == {
        "x-message-ttl": 0,
        "x-dead-letter-exchange": "events",
        "x-dead-letter-routing-key": "a.b",
    }
    # a fanout target keeps its empty routing key
    assert landing_for("broadcast", "").queues[delays.landing_queue("broadcast", "")].dead_letter_routing_key == ""


def test_a_queue_target_is_bound_to_the_final_exchange_without_a_landing_queue() -> None:
    # Deleting the queue deletes this binding: a message due then goes to the alternate exchange.
    topology = landing_for("", "celery", queue_type="classic")
    pattern = "*." * LEVELS + destination_id("", "celery")
    assert not topology.queues and not topology.exchanges
    assert topology.bindings == (
        Binding(DELIVERY_EXCHANGE, FINAL, "exchange", pattern),
        Binding(FINAL, "celery", "queue", pattern),
    )


def test_a_queue_target_never_matches_the_landing_binding_of_older_versions() -> None:
    import hashlib

    old_pattern = "*." * LEVELS + hashlib.sha1(b"\0celery").hexdigest()[:16]
    assert not topic_matches(old_pattern, delay_routing_key(1234, "", "celery"))
    assert topic_matches(delays.landing_pattern("", "celery"), delay_routing_key(1234, "", "celery"))


def test_a_destination_whose_binding_is_gone_reaches_only_the_unroutable_queue(hexadecimal: Topology) -> None:
    # The broker's alternate-exchange rule, simulated: the final exchange routes nothing.
    gone = Topology(
        exchanges=hexadecimal.exchanges,
        queues=hexadecimal.queues,
        bindings=tuple(b for b in hexadecimal.bindings if not (b.source == FINAL and b.destination == "celery")),
    )
    key = delay_routing_key(0, "", "celery")
    assert _route(gone, FINAL, key) == []
    assert dict(gone.exchanges[FINAL].arguments)["alternate-exchange"] == UNROUTABLE
    assert [b.destination for b in gone.bindings if b.source == UNROUTABLE] == [UNROUTABLE]


def test_radix_16_names_one_queue_per_digit() -> None:
    topology = delay_infrastructure(9, radix=16)
    assert len(topology.exchanges) == 10 + 2 and len(topology.queues) == 9 * 15 + 1
    queue = topology.queues["amqptasks.delay.2.f"]
    assert queue.message_ttl_ms == 15 * 16**2 and queue.dead_letter_exchange == "amqptasks.delay.1"
    assert delay_routing_key(2000, "", "q", levels=9, radix=16).startswith("0.0.0.0.0.0.7.d.0.")


# --- merge ------------------------------------------------------------------------------------


def test_merge_keeps_identical_definitions_once_and_rejects_different_ones() -> None:
    a = Topology(
        exchanges={"x": Exchange("x", origin=Origin("a.yaml", 1))},
        queues={"q": Queue("q", origin=Origin("a.yaml", 2))},
        bindings=(Binding("x", "q", routing_key="k"),),
    )
    b = Topology(
        exchanges={"x": Exchange("x", origin=Origin("b.yaml", 7))},
        queues={"r": Queue("r")},
        bindings=(Binding("x", "q", routing_key="k"), Binding("x", "r", routing_key="k")),
    )
    merged = merge(a, b)
    assert set(merged.exchanges) == {"x"} and set(merged.queues) == {"q", "r"}
    assert len(merged.bindings) == 2
    clash = Topology(queues={"q": Queue("q", message_ttl_ms=5, origin=Origin("c.yaml", 3))})
    with pytest.raises(TopologyError) as info:
        merge(a, clash)
    text = str(info.value)
    assert "c.yaml:3" in text and "a.yaml:2" in text and "message_ttl_ms" in text


def test_user_topology_clashing_with_the_cascade_is_reported() -> None:
    user = Topology(queues={"amqptasks.delay.0": Queue("amqptasks.delay.0", origin=Origin("mine.yaml", 4))})
    with pytest.raises(TopologyError, match=r"mine\.yaml:4"):
        merge(delay_infrastructure(BIN_LEVELS, radix=BIN_RADIX), user)


def test_user_topology_clashing_with_the_default_cascade_is_reported() -> None:
    user = Topology(queues={"amqptasks.delay.0.1": Queue("amqptasks.delay.0.1", origin=Origin("mine.yaml", 4))})
    with pytest.raises(TopologyError, match=r"mine\.yaml:4"):
        merge(delay_infrastructure(), user)


def test_landing_for_the_same_destination_twice_merges_cleanly() -> None:
    once = merge(delay_infrastructure(), landing_for("", "celery"))
    twice = merge(once, landing_for("", "celery"))
    assert twice == once
    binary = merge(delay_infrastructure(BIN_LEVELS, radix=BIN_RADIX), landing_for("", "celery", levels=BIN_LEVELS))
    assert merge(binary, landing_for("", "celery", levels=BIN_LEVELS)) == binary


# --- time arithmetic --------------------------------------------------------------------------

NOW = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
NOW_MS = 1_893_553_445_124  # NOW in epoch ms, rounded up


def test_now_constant() -> None:
    assert NOW_MS == -(-int(NOW.timestamp() * 1_000_000) // 1000)


def test_no_delay_is_none() -> None:
    assert delay_ms_for(now_ms=NOW_MS) is None
    assert due_ms(now_ms=NOW_MS) is None


def test_countdown_in_seconds_rounds_up_to_whole_ms() -> None:
    assert delay_ms_for(now_ms=NOW_MS, countdown=0) == 0
    assert delay_ms_for(now_ms=NOW_MS, countdown=1.1) == 1100  # not 1101 from binary float noise
    assert delay_ms_for(now_ms=NOW_MS, countdown=0.0001) == 1  # never early
    assert delay_ms_for(now_ms=NOW_MS, countdown=30) == 30_000
    assert due_ms(now_ms=NOW_MS, countdown=2.5) == NOW_MS + 2500


def test_eta_aware_datetime() -> None:
    assert delay_ms_for(now_ms=NOW_MS, eta=NOW + timedelta(minutes=5)) == 300_000  # both rounded up to the ms
    assert delay_ms_for(now_ms=NOW_MS, eta=NOW - timedelta(days=1)) == 0  # past: due now
    other_zone = (NOW + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-7)))
    assert delay_ms_for(now_ms=NOW_MS, eta=other_zone) == 3_600_000
    assert due_ms(now_ms=NOW_MS, eta=NOW + timedelta(seconds=10)) == NOW_MS + 10_000


def test_negative_countdown_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="countdown must not be negative"):
        delay_ms_for(now_ms=NOW_MS, countdown=-1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "10", True, 1e308])
def test_countdown_must_be_a_finite_number(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="countdown"):
        delay_ms_for(now_ms=NOW_MS, countdown=bad)  # type: ignore[arg-type]


def test_naive_eta_is_a_configuration_error_with_advice() -> None:
    with pytest.raises(ConfigurationError, match=r"use an aware datetime, e\.g\. datetime\.now\(timezone\.utc\)"):
        delay_ms_for(now_ms=NOW_MS, eta=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="eta must be a datetime"):
        delay_ms_for(now_ms=NOW_MS, eta=1234)  # type: ignore[arg-type]


def test_countdown_and_eta_together_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        delay_ms_for(now_ms=NOW_MS, countdown=1, eta=NOW)


def test_delay_beyond_the_cascade_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="longest delay"):
        delay_ms_for(now_ms=NOW_MS, countdown=max_delay_ms() / 1000 + 1)
    with pytest.raises(ConfigurationError, match="longest delay"):
        delay_ms_for(now_ms=NOW_MS, eta=NOW + timedelta(days=3 * 365))
    assert delay_ms_for(now_ms=NOW_MS, eta=NOW + timedelta(days=2 * 365)) is not None
    longest = max_delay_ms(BIN_LEVELS, BIN_RADIX)
    with pytest.raises(ConfigurationError, match="longest delay"):
        delay_ms_for(now_ms=NOW_MS, countdown=longest / 1000 + 1, levels=BIN_LEVELS, radix=BIN_RADIX)
    with pytest.raises(ConfigurationError, match="longest delay"):
        delay_ms_for(now_ms=NOW_MS, eta=NOW + timedelta(days=3 * 365), levels=BIN_LEVELS, radix=BIN_RADIX)
    assert delay_ms_for(now_ms=NOW_MS, eta=NOW + timedelta(days=2 * 365), levels=BIN_LEVELS, radix=BIN_RADIX) is not None


def test_expires() -> None:
    assert expires_ms_for(now_ms=NOW_MS, expires=None) is None
    assert expires_ms_for(now_ms=NOW_MS, expires=60) == NOW_MS + 60_000
    assert expires_ms_for(now_ms=NOW_MS, expires=0.5) == NOW_MS + 500
    assert expires_ms_for(now_ms=NOW_MS, expires=NOW + timedelta(hours=1)) == NOW_MS + 3_600_000
    assert expires_ms_for(now_ms=NOW_MS, expires=NOW - timedelta(hours=1)) < NOW_MS  # already expired
    with pytest.raises(ConfigurationError, match="aware"):
        expires_ms_for(now_ms=NOW_MS, expires=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="negative"):
        expires_ms_for(now_ms=NOW_MS, expires=-5)
    with pytest.raises(ConfigurationError):
        expires_ms_for(now_ms=NOW_MS, expires=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        expires_ms_for(now_ms=NOW_MS, expires="1h")  # type: ignore[arg-type]
