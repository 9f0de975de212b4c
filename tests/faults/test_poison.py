"""Scenario 4: poison fuzz. Malformed messages generated with hypothesis, published raw with pika
and interleaved with good tasks sent through the App, against one real worker.

The promise (docs/protocol.md §1.4, §3): a message the worker cannot run is dead-lettered once,
with the reason in ``x-amqptasks-reason``, and never requeued in a loop; the worker stays up; the
good tasks around it all complete. "Cannot run" includes a task called with arguments that do not
fit, and arguments of the wrong type (the task checks them and raises: dead-lettered too).

Messages are *collected* by ``@given`` functions (one per kind, ``max_examples`` = how many) and
then published in one go to one worker: hypothesis chooses the inputs, not the control flow.
``AMQPTASKS_FUZZ_SEED`` reproduces a run's messages (the seed is printed).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import inspect
import json
import os
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.faults.ledger import read_done, record, tally, wait_complete
from tests.faults.raw import DIRECT_REPLY_TO, raw_publisher
from tests.faults.scenario import (
    Workdir,
    child_pids,
    imported,
    make_module,
    stop_worker,
    wait_settled,
    workdir,
)
from tests.integration.workerproc import WorkerProcess, drain, queue_counts

MODULE = "fk_poison"
TASK = f"{MODULE}.strict"  # every malformed message is aimed at this task
REGISTERED = {TASK, f"{MODULE}.good", f"{MODULE}.replying"}
BODY = """
BAD_RAN = DONE[: -len("done.txt")] + "bad-ran.txt"

@app.task(queue=QUEUE, bind=True, ignore_result=True)
def good(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")

@app.task(queue=QUEUE, bind=True)
def replying(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")
    return n

@app.task(queue=QUEUE, bind=True)
def strict(self, n, tag):
    # The worker checks arity, not types (Python has none to check): the task checks its own and
    # raises, which dead-letters the message with the exception as the reason.
    if type(n) is not int or type(tag) is not str:
        raise TypeError(f"strict(n: int, tag: str) got ({type(n).__name__}, {type(tag).__name__})")
    # Every message aimed at this task is malformed: reaching this line means one was run.
    with open(BAD_RAN, "a") as f:
        f.write(self.request.id + "\\n")
"""

ID = "<fresh task id>"  # replaced by a new uuid at publish time (hypothesis may repeat examples)
OMIT = None  # a property or header value of None: leave it out
BASE_TIMESTAMP = 1_700_000_000  # timestamp property = BASE + index: identifies messages without headers

# Reasons, as the worker words them (amqptasks/core/envelope.py, worker/execute.py, core/retry.py).
NOT_JSON = r"^body is not valid JSON"
NOT_OBJECT = r"^body must be a JSON object"
NOT_JSON_OR_OBJECT = r"^body (is not valid JSON|must be a JSON object)"
SHAPE = r'^body "args" must be a list and "kwargs" an object'
DO_NOT_FIT = rf"^arguments do not fit {re.escape(TASK)}"
WRONG_TYPES = r"^TypeError: strict\(n: int, tag: str\)"
NO_TASK = r"^missing header 'task'"
NO_ID = r"^missing header 'id'"
UNKNOWN = r"^unknown task "  # also for a name sent as bytes (an AMQP byte array): decoded, then looked up
EXPIRED = r"^expired"
CONTENT_TYPE = r"^content type .* is not application/json"


def not_integer_header(name: str) -> str:
    return rf"^header '{name}' must be an integer"


@dataclass(frozen=True)
class Bad:
    """One malformed message and the dead-letter reason it must get (a regular expression)."""

    kind: str
    body: bytes
    headers: dict[str, Any] | None
    reason: str
    properties: Mapping[str, Any] = field(default_factory=dict)  # overrides; a None value: omitted


def task_headers(**changes: Any) -> dict[str, Any]:
    """Valid task headers with ``changes``; a change to ``OMIT`` removes the header."""
    headers: dict[str, Any] = {"amqptasks": 1, "task": TASK, "id": ID, "retries": 0}
    for name, value in changes.items():
        if value is OMIT:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


# --- values -------------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16)
)  # fmt: skip
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
# Everything pika can put into an AMQP field table besides a string (floats it cannot encode).
short_keys = st.text(min_size=1, max_size=8)
amqp_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=16)
    | st.decimals(min_value=-10_000, max_value=10_000, places=2, allow_nan=False, allow_infinity=False)
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1))
)  # fmt: skip
amqp_values = st.recursive(
    amqp_scalars | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_keys, inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
amqp_non_strings = (
    amqp_scalars | st.lists(amqp_values, max_size=3) | st.dictionaries(short_keys, amqp_values, max_size=3)
).filter(lambda v: not isinstance(v, str))
valid_args_body = st.builds(
    lambda n, tag: orjson.dumps({"args": [n, tag], "kwargs": {}}), st.integers(-(2**31), 2**31), st.text(max_size=12)
)
plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=10)


def is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def _fits(args: list[Any], kwargs: dict[str, Any]) -> bool:
    def strict(n: Any, tag: Any) -> None: ...

    try:
        inspect.signature(strict).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _wrong_types(n: Any, tag: Any) -> bool:
    return type(n) is not int or type(tag) is not str


# --- kinds of malformed messages ------------------------------------------------------------------

body_random_bytes = st.binary(max_size=600).filter(lambda b: not is_json_object(b)).map(
    lambda b: Bad("body_random_bytes", b, task_headers(), NOT_JSON_OR_OBJECT)
)

INVALID_UTF8 = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80",
                b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xe2\x82", b"\xf0\x9f\x98"]  # fmt: skip


def _invalid_utf8(pre: str, bad: bytes, post: str, n: int) -> Bad:
    body = b'{"args": [%d, "' % n + pre.encode() + bad + post.encode() + b'"], "kwargs": {}}'
    return Bad("body_invalid_utf8", body, task_headers(), NOT_JSON)


body_invalid_utf8 = st.builds(_invalid_utf8, plain_text, st.sampled_from(INVALID_UTF8), plain_text, st.integers(0, 10**6))

body_not_object = json_values.filter(lambda v: not isinstance(v, dict)).map(
    lambda v: Bad("body_not_object", orjson.dumps(v), task_headers(), NOT_OBJECT)
)

_MISSING = object()


def _shape(args: Any, kwargs: Any, extra: dict[str, Any]) -> Bad:
    payload = dict(extra)
    if args is not _MISSING:
        payload["args"] = args
    if kwargs is not _MISSING:
        payload["kwargs"] = kwargs
    return Bad("body_wrong_shape", orjson.dumps(payload), task_headers(), SHAPE)


body_wrong_shape = st.builds(
    _shape,
    st.just(_MISSING) | json_values,
    st.just(_MISSING) | json_values,
    st.dictionaries(st.text(max_size=6).filter(lambda k: k not in ("args", "kwargs")), json_values, max_size=2),
).filter(lambda bad: (lambda p: ("args" in p and not isinstance(p["args"], list))
                      or ("kwargs" in p and not isinstance(p["kwargs"], dict)))(orjson.loads(bad.body)))  # fmt: skip

args_do_not_fit = st.tuples(
    st.lists(json_values, max_size=5),
    st.dictionaries(st.sampled_from(["n", "tag", "self", "x", "extra"]) | st.text(max_size=6), json_values, max_size=3),
).filter(lambda ak: not _fits(*ak)).map(
    lambda ak: Bad("args_do_not_fit", orjson.dumps({"args": ak[0], "kwargs": ak[1]}), task_headers(), DO_NOT_FIT)
)


def _typed(n: Any, tag: Any, how: str) -> Bad:
    payload = {"pos": {"args": [n, tag]}, "kw": {"kwargs": {"n": n, "tag": tag}}, "mixed": {"args": [n], "kwargs": {"tag": tag}}}[how]
    return Bad("args_wrong_types", orjson.dumps(payload), task_headers(), WRONG_TYPES)


args_wrong_types = st.tuples(json_values, json_values).filter(lambda nt: _wrong_types(*nt)).flatmap(
    lambda nt: st.sampled_from(["pos", "kw", "mixed"]).map(lambda how: _typed(nt[0], nt[1], how))
)


def _huge(variant: str, size: int, pattern: bytes) -> Bad:
    if variant == "long_args":  # a valid object with ~size/2 arguments
        body, reason = b'{"args": [' + b",".join([b"0"] * (size // 2)) + b'], "kwargs": {}}', DO_NOT_FIT
    elif variant == "long_string":  # one huge string among three arguments
        body, reason = orjson.dumps({"args": [1, "x" * size, "extra"]}), DO_NOT_FIT
    elif variant == "deep":  # nesting deeper than any JSON parser allows
        body, reason = b"[" * size, NOT_JSON
    else:  # garbage that starts with a byte that is never UTF-8
        body, reason = b"\xff" + pattern * (size // len(pattern)), NOT_JSON
    return Bad("body_huge", body, task_headers(), reason)


body_huge = st.builds(
    _huge, st.sampled_from(["long_args", "long_string", "deep", "garbage"]), st.integers(64_000, 1_000_000),
    st.binary(min_size=1, max_size=8),
)  # fmt: skip

header_task_missing = st.tuples(valid_args_body, st.booleans()).map(
    lambda bn: Bad("header_task_missing", bn[0], None if bn[1] else task_headers(task=OMIT), NO_TASK)
)

DANGEROUS_NAMES = ["os.system", "builtins.eval", "builtins.exec", "subprocess.run", "pickle.loads", "__import__",
                   f"{MODULE}.app", f"{MODULE}.record", MODULE, f"{TASK} ", TASK.upper(), f"{TASK}\x00", f"{TASK}.fn"]  # fmt: skip


def _decoded(name: str | bytes) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


header_task_unknown = st.tuples(
    st.text(min_size=1, max_size=80) | st.sampled_from(DANGEROUS_NAMES) | st.binary(min_size=1, max_size=40),
    valid_args_body,
).filter(lambda tb: _decoded(tb[0]) not in REGISTERED).map(
    lambda tb: Bad("header_task_unknown", tb[1], task_headers(task=tb[0]), UNKNOWN)
)

header_task_wrong_type = st.tuples(amqp_non_strings.filter(lambda v: not isinstance(v, bytes)), valid_args_body).map(
    lambda vb: Bad("header_task_wrong_type", vb[1], task_headers(task=vb[0]) if vb[0] is not None else task_headers(task=OMIT), NO_TASK)
)

header_id_bad = st.tuples(st.just(OMIT) | st.just("") | amqp_non_strings, valid_args_body).map(
    lambda vb: Bad("header_id_bad", vb[1], task_headers(id=vb[0]), NO_ID, {"message_id": "fuzz-no-id"})
)

header_int_garbage = st.tuples(
    st.sampled_from(["retries", "eta", "expires"]),
    (amqp_non_strings | st.text(max_size=12)).filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, int))),
    valid_args_body,
).map(lambda nvb: Bad("header_int_garbage", nvb[2], task_headers(**{nvb[0]: nvb[1]}), not_integer_header(nvb[0])))

# A negative retry count is an integer, so it passes the header check; the task then raises (wrong
# argument types) and the retry decision meets the negative count.
header_negative_retries = st.tuples(st.integers(-(2**63), -1), json_values).map(
    lambda rv: Bad("header_negative_retries", orjson.dumps({"args": [rv[1], 0]}), task_headers(retries=rv[0]), r"retries")
)

header_expired = st.tuples(st.integers(-(2**63), int(time.time() * 1000) - 60_000), valid_args_body).map(
    lambda eb: Bad("header_expired", eb[1], task_headers(expires=eb[0]), EXPIRED)
)

props_content_type = st.tuples(
    st.text(max_size=60).filter(lambda t: t not in ("", "application/json")), valid_args_body
).map(lambda tb: Bad("props_content_type", tb[1], task_headers(), CONTENT_TYPE, {"content_type": tb[0]}))

ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "bzip2": bz2.compress,
    "base64": base64.b64encode,
    "utf-16": lambda b: b.decode().encode("utf-16"),
    "utf-32": lambda b: b.decode().encode("utf-32"),
}
props_content_encoding = st.tuples(st.sampled_from(sorted(ENCODERS)), valid_args_body).map(
    lambda eb: Bad("props_content_encoding", ENCODERS[eb[0]](eb[1]), task_headers(), NOT_JSON, {"content_encoding": eb[0]})
)

# Odd properties and headers around a malformed core: they must not change what happens to it.
# reply_to: never a queue that exists (a reply would land there). Direct reply-to addresses that
# are not real ones crash the broker's channel process when replied to (RabbitMQ 3.10).
malformed_direct_reply_to = st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=12)).map(
    lambda ab: f"{DIRECT_REPLY_TO}.{base64.b64encode(ab[0]).decode()}.{base64.b64encode(ab[1]).decode()}"
)
weird_reply_to = (
    st.just(OMIT) | st.just("") | st.just(DIRECT_REPLY_TO) | st.just(f"{DIRECT_REPLY_TO}.garbage") | malformed_direct_reply_to
    | st.text(max_size=40).map(lambda t: f"fk-nowhere-{t}") | st.text(max_size=20).map(lambda t: f"amq.gen-{t}")
).filter(lambda r: r is None or len(r.encode()) < 256)  # fmt: skip
weird_short = (st.just(OMIT) | st.just(ID) | st.text(max_size=60)).filter(lambda t: t is None or len(t.encode()) < 256)
cores = body_random_bytes | body_not_object | body_wrong_shape | args_do_not_fit | header_task_unknown | header_id_bad


def _weird(core: Bad, props: dict[str, Any], protocol: Any, extra: dict[str, Any]) -> Bad:
    headers = dict(core.headers or {}) | {f"app-{k}": v for k, v in extra.items()}
    headers["amqptasks"] = protocol
    if protocol is None:
        del headers["amqptasks"]
    return replace(core, kind="props_weird", headers=headers, properties=dict(core.properties) | props)


props_weird = st.builds(
    _weird,
    cores,
    st.fixed_dictionaries({
        "message_id": weird_short, "correlation_id": weird_short, "reply_to": weird_reply_to,
        "priority": st.none() | st.integers(0, 255), "type": weird_short, "app_id": weird_short,
        "content_encoding": weird_short,
    }),
    st.none() | amqp_values,
    st.dictionaries(short_keys, amqp_values, max_size=3),
)  # fmt: skip


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# Properties pamqp could not decode at all (a shortstr that is not UTF-8, a timestamp past year
# 9999): before the worker decoded them leniently, one such message blocked the queue for good.
undecodable_props = st.fixed_dictionaries(
    {},
    optional={
        "message_id": st.binary(min_size=1, max_size=40).filter(_not_utf8),
        "correlation_id": st.binary(min_size=1, max_size=40).filter(_not_utf8),
        "type": st.binary(min_size=1, max_size=40).filter(_not_utf8),
        "app_id": st.binary(min_size=1, max_size=40).filter(_not_utf8),
        "reply_to": st.binary(min_size=1, max_size=40).filter(_not_utf8),
        "timestamp": st.integers(253_402_300_800_000, 2**64 - 1),  # past 9999 even read as milliseconds
    },
).filter(bool)
props_undecodable = st.builds(lambda core, props: replace(core, kind="props_undecodable", properties=dict(core.properties) | props),
                              cores, undecodable_props)  # fmt: skip

KINDS: dict[str, tuple[st.SearchStrategy[Bad], int]] = {
    "body_random_bytes": (body_random_bytes, 100),
    "body_invalid_utf8": (body_invalid_utf8, 80),
    "body_not_object": (body_not_object, 80),
    "body_wrong_shape": (body_wrong_shape, 80),
    "args_do_not_fit": (args_do_not_fit, 80),
    "args_wrong_types": (args_wrong_types, 80),
    "body_huge": (body_huge, 20),  # 64 KB - 1 MB each
    "header_task_missing": (header_task_missing, 60),
    "header_task_unknown": (header_task_unknown, 80),
    "header_task_wrong_type": (header_task_wrong_type, 60),
    "header_id_bad": (header_id_bad, 60),
    "header_int_garbage": (header_int_garbage, 80),
    "header_negative_retries": (header_negative_retries, 20),
    "header_expired": (header_expired, 40),
    "props_content_type": (props_content_type, 60),
    "props_content_encoding": (props_content_encoding, 40),
    "props_weird": (props_weird, 100),
    "props_undecodable": (props_undecodable, 40),
}
MIN_BAD = 1_000
GOOD = 1_000


def collect(strategy: st.SearchStrategy[Bad], count: int, seed: int) -> list[Bad]:
    """``count`` examples of ``strategy`` (fewer only if hypothesis runs out of distinct ones)."""
    found: list[Bad] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def draw(example: Bad) -> None:
        found.append(example)

    draw()
    return found


def _key(properties: Any) -> int | None:
    """The index a published message carried (header ``x-fuzz``, else its timestamp)."""
    headers = properties.headers or {}
    if "x-fuzz" in headers:
        return int(headers["x-fuzz"])
    if isinstance(properties.timestamp, int):
        return properties.timestamp - BASE_TIMESTAMP
    return None


def _publish_bad(raw: Any, queue: str, index: int, bad: Bad) -> None:
    task_id = f"fuzz-{index}-{os.urandom(4).hex()}"
    headers = None
    if bad.headers is not None:
        headers = {k: (task_id if v == ID else v) for k, v in bad.headers.items()} | {"x-fuzz": str(index)}
    properties: dict[str, Any] = {"content_type": "application/json", "message_id": task_id}
    properties |= {k: (task_id if v == ID else v) for k, v in bad.properties.items()}
    properties = {"timestamp": BASE_TIMESTAMP + index} | {k: v for k, v in properties.items() if v is not None}
    raw.publish(queue, bad.body, headers, **properties)


def _wait_progressing(progress: Callable[[], Any], done: Callable[[Any], bool], timeout: float, stall: float) -> None:
    """Wait until ``done(progress())``, at most ``timeout`` s, and give up early when ``progress()``
    has not changed for ``stall`` s (a stuck worker fails the test in seconds, not minutes)."""
    deadline = time.monotonic() + timeout
    last, since = progress(), time.monotonic()
    while time.monotonic() < deadline and not done(last):
        time.sleep(0.3)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            return


def _worker_errors(log: str, limit: int = 6) -> str:
    """The worker log's ERROR entries, grouped: how many, the final exception line, and the last
    amqptasks frame it passed through. Expected ones are skipped: "Task ... failed" (a task that
    raised), and aiormq's note that the broker closed the *replies* connection (what a malformed
    direct reply-to address does to it; replies have that connection to themselves for this reason)."""
    entries = re.split(r"\n(?=\[\d{4}-)", log)
    summary: Counter[str] = Counter()
    for entry in entries:
        if ": ERROR/" not in entry[:60] or re.match(r"\[[^]]*\] Task \S+ failed in ", entry):
            continue
        if "Unexpected connection close from remote" in entry and "+replies+" in entry:
            continue
        lines = entry.strip().splitlines()
        frames = [line.strip() for line in lines if line.strip().startswith('File "') and "/amqptasks/" in line]
        where = f" (last in {frames[-1].split('/amqptasks/')[-1]})" if frames else ""
        summary[f"{lines[-1].strip()[:200]}{where}"] += 1
    return "\n".join(f"  {n} x {text}" for text, n in summary.most_common(limit))


def _kind_table(sent: Counter[str], dead: Counter[str], wrong: Counter[str]) -> str:
    rows = [f"  {kind:<24} sent={sent[kind]:<4} dead-lettered={dead[kind]:<4} wrong reason={wrong[kind]}" for kind in sorted(sent)]
    return "\n".join(rows)


@pytest.mark.timeout(180)
def test_poison_fuzz(workdir: Workdir, broker_url: str) -> None:
    """≥1,000 malformed messages among 1,000 good tasks: each bad one dead-lettered once with the
    right reason, every good one completed, the worker process the same one throughout."""
    generating = time.monotonic()
    seed = int(os.environ.get("AMQPTASKS_FUZZ_SEED") or random.randrange(2**32))
    print(f"\npoison fuzz seed {seed} (AMQPTASKS_FUZZ_SEED={seed} reproduces these messages)")
    bad: list[Bad] = []
    for strategy, count in KINDS.values():
        bad += collect(strategy, count, seed)
    random.Random(seed).shuffle(bad)
    assert len(bad) >= MIN_BAD, f"hypothesis produced only {len(bad)} malformed messages"
    sent_kinds = Counter(b.kind for b in bad)

    make_module(workdir, MODULE, BODY)
    bad_ran = workdir.path / "bad-ran.txt"
    started = time.monotonic()
    worker = WorkerProcess(workdir.path, broker_url, "-A", MODULE, "--queues", workdir.queue, "--processes", "1", "--loglevel", "warning")
    try:
        worker.wait_consuming(workdir.queue)
        [consumer_pid] = child_pids(worker.process.pid)
        good_ids: list[str] = []
        rounds = 100
        with imported(MODULE) as tasks, raw_publisher(broker_url, f"poison fuzz {workdir.queue}") as raw:
            for r in range(rounds):
                for index in range(r * len(bad) // rounds, (r + 1) * len(bad) // rounds):
                    _publish_bad(raw, workdir.queue, index, bad[index])
                batch = GOOD // rounds
                results = tasks.app.send_many(tasks.good.s(n) for n in range(r * batch, (r + 1) * batch))
                good_ids += [result.id for result in results]
            published = time.monotonic()
            _wait_progressing(lambda: (len(read_done(workdir.done)), queue_counts(broker_url, workdir.dead)[0]),
                              lambda p: p[0] >= len(good_ids) and p[1] >= len(bad), timeout=75, stall=15)  # fmt: skip
            wait_settled(broker_url, workdir.queue, timeout=5)
            drained = time.monotonic()
            raw.pump(0.5)  # FAILURE replies to the poison messages that asked for one
            replies = len(raw.replies)
        alive = worker.process.poll() is None and child_pids(worker.process.pid) == [consumer_pid]
        code = stop_worker(worker)
    finally:
        worker.stop()
    log = worker.log

    dead = drain(broker_url, workdir.dead)
    left = queue_counts(broker_url, workdir.queue)[0]
    dead_kinds: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    problems: list[str] = []
    seen: Counter[int] = Counter()
    for properties, _body in dead:
        key = _key(properties)
        if key is None or not 0 <= key < len(bad):
            problems.append(f"an unexpected dead letter: {properties.headers!r:.300}")
            continue
        seen[key] += 1
        item = bad[key]
        dead_kinds[item.kind] += 1
        reason = (properties.headers or {}).get("x-amqptasks-reason")
        if not isinstance(reason, str) or not re.search(item.reason, reason, re.DOTALL):
            wrong[item.kind] += 1
            if wrong[item.kind] <= 2:
                problems.append(f"{item.kind} #{key}: reason {reason!r:.200} does not match {item.reason!r}")
    missing = [i for i in range(len(bad)) if seen[i] == 0]
    twice = [i for i, n in seen.items() if n > 1]
    errors = _worker_errors(log)
    if errors:  # first: an error here usually explains everything below it
        problems.insert(0, f"the worker logged errors:\n{errors}")
    if missing:
        problems.append(f"{len(missing)} malformed messages never dead-lettered, per kind "
                        f"{dict(sorted(Counter(bad[i].kind for i in missing).items()))}")  # fmt: skip
        if not left:  # with messages left in the queue, most missing ones were simply never delivered
            for kind in sorted({bad[i].kind for i in missing}):
                example = next(bad[i] for i in missing if bad[i].kind == kind)
                problems.append(f"  e.g. {kind}: body={example.body[:80]!r} headers={example.headers!r:.200} "
                                f"props={dict(example.properties)!r:.120}")  # fmt: skip
    if twice:
        problems.append(f"{len(twice)} malformed messages dead-lettered more than once (a redelivery loop), "
                        f"kinds {Counter(bad[i].kind for i in twice)}")  # fmt: skip
    if bad_ran.exists():
        problems.append(f"{len(bad_ran.read_text().split())} malformed messages RAN the task")
    if "connection lost" in log:
        first = log[log.index("connection lost") - 80 :][:400]
        problems.append(f"the worker lost its connection {log.count('connection lost')} time(s): {first}")
    if not alive:
        problems.append("the worker's consumer process did not survive")
    if left:
        problems.append(f"{left} message(s) left in {workdir.queue}: the worker stopped taking messages")

    result = record(tally("4 poison", good_ids, workdir.done, started,
                          detail=f"{len(bad)} malformed sent, {len(dead)} dead-lettered ({len(seen)} distinct), "
                                 f"{replies} FAILURE replies, worker alive throughout: {alive}"))  # fmt: skip
    print(f"POISON timing: generated in {started - generating:.1f}s, published in {published - started:.1f}s, "
          f"drained in {drained - published:.1f}s")  # fmt: skip
    print("POISON kinds:\n" + _kind_table(sent_kinds, dead_kinds, wrong), flush=True)
    print("\n".join(problems), flush=True)
    assert code == 0, log[-3000:]
    assert not problems, "\n".join(problems)
    assert result.lost == 0 and result.duplicates == 0, result.line()
    assert len(dead) == len(bad)


# --- the two ways found to make a worker loop on one message (see /tmp/helper-requests/B.md) ----

def _run_one_by_one(workdir: Workdir, broker_url: str, messages: list[tuple[bytes, dict[str, Any], dict[str, Any]]],
                    good: int, settle: float) -> tuple[list[str], str, list[str]]:
    """Publish ``messages`` then ``good`` good tasks; give the worker ``settle`` seconds; return the
    good ids, the worker log and the ids recorded by tasks (with repeats)."""
    make_module(workdir, MODULE, BODY)
    worker = WorkerProcess(workdir.path, broker_url, "-A", MODULE, "--queues", workdir.queue, "--processes", "1",
                           "--loglevel", "warning")  # fmt: skip
    try:
        worker.wait_consuming(workdir.queue)
        with imported(MODULE) as tasks, raw_publisher(broker_url, f"poison {workdir.queue}") as raw:
            for body, headers, properties in messages:
                raw.publish(workdir.queue, body, headers, **properties)
            ids = [r.id for r in tasks.app.send_many(tasks.good.s(n) for n in range(good))]
            wait_complete(ids, workdir.done, timeout=settle)
            time.sleep(2)  # a loop shows as repeats: give it time to repeat
        assert worker.process.poll() is None, worker.log
        stop_worker(worker)
    finally:
        worker.stop()
    return ids, worker.log, [task_id for task_id, _ in read_done(workdir.done)]


@pytest.mark.timeout(90)
def test_malformed_direct_reply_to_does_not_loop(workdir: Workdir, broker_url: str) -> None:
    """A ``reply_to`` that looks like a direct reply-to address but is not one: the worker's reply
    must not cost it the connection that holds the message (RabbitMQ 3.10's channel crashes
    decoding such an address), or the task runs again and again."""
    addresses = collect(
        st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=12)).map(
            lambda ab: f"amq.rabbitmq.reply-to.{base64.b64encode(ab[0]).decode()}.{base64.b64encode(ab[1]).decode()}"
        ),
        5, seed=1,
    )  # fmt: skip
    addresses += ["amq.rabbitmq.reply-to.g1h2AA==.xyz", "amq.rabbitmq.reply-to.garbage"]
    messages = []
    for n, address in enumerate(addresses):
        # A task that replies, and a poison message (the worker replies FAILURE to those too).
        task_id = f"reply-to-{n}"
        headers = {"amqptasks": 1, "task": f"{MODULE}.replying", "id": task_id}
        properties = {"content_type": "application/json", "message_id": task_id, "reply_to": address}
        messages.append((b'{"args": [1]}', headers, properties))
        messages.append((b"{not json", headers | {"id": f"poison-{n}"}, properties | {"message_id": f"poison-{n}"}))
    good_ids, log, ran = _run_one_by_one(workdir, broker_url, messages, good=50, settle=15)
    runs = Counter(ran)
    repeated = {task_id: n for task_id, n in runs.items() if n > 1}
    runs_per_task = Counter(runs[f"reply-to-{n}"] for n in range(len(addresses)))  # {runs: how many tasks}
    print(f"FAULTS 4 poison, malformed direct reply-to: {len(addresses)} malformed reply_to; tasks by number of runs {dict(runs_per_task)}; "
          f"{log.count('connection lost')} connection losses; {len(repeated)} tasks ran more than once")  # fmt: skip
    dead = Counter(str((p.headers or {}).get("id")) for p, _ in drain(broker_url, workdir.dead))
    dead_per_poison = Counter(dead[f"poison-{n}"] for n in range(len(addresses)))
    print(f"  poison messages with such a reply_to, by number of dead letters: {dict(dead_per_poison)}")
    assert all(runs[f"reply-to-{n}"] == 1 for n in range(len(addresses))), f"runs per task: {repeated}\n{log[-2000:]}"
    assert all(dead[f"poison-{n}"] == 1 for n in range(len(addresses))), f"dead-lettered per poison message: {dead}"
    assert all(runs[i] == 1 for i in good_ids), f"good tasks repeated: {repeated}"
    assert "connection lost" not in log, log[-2000:]


@pytest.mark.timeout(90)
def test_undecodable_properties_do_not_block_the_queue(workdir: Workdir, broker_url: str) -> None:
    """Properties pamqp cannot decode (a timestamp past year 9999, a shortstr that is not UTF-8):
    such a message must be settled once — run, or dead-lettered — not stop the queue behind it."""
    headers = {"amqptasks": 1, "task": f"{MODULE}.good"}
    messages = [
        (b'{"args": [1]}', headers | {"id": "ts"}, {"content_type": "application/json", "timestamp": 2**63}),
        (b'{"args": [2]}', headers | {"id": "mid"}, {"content_type": "application/json", "message_id": b"\xff\xfe"}),
        (b'{"args": [3]}', headers | {"id": "ctype"}, {"content_type": b"application/\xff"}),
    ]
    good_ids, log, ran = _run_one_by_one(workdir, broker_url, messages, good=50, settle=15)
    runs = Counter(ran)
    dead = Counter(str((p.headers or {}).get("id")) for p, _ in drain(broker_url, workdir.dead))
    settled = {name: runs[name] + dead[name] for name in ("ts", "mid", "ctype")}
    print(f"FAULTS 4 poison, undecodable properties: settled (runs + dead letters) {settled}, "
          f"{len(set(good_ids) & set(runs))}/{len(good_ids)} good tasks done, {log.count('connection lost')} connection losses")  # fmt: skip
    blocked = set(good_ids) - set(runs)
    assert not blocked, f"the queue is blocked: {len(blocked)} good tasks never ran\n{log[-1500:]}"
    assert settled == {"ts": 1, "mid": 1, "ctype": 1}, settled
    assert "connection lost" not in log, log[-1500:]
