"""Failover on a 3-node cluster (issue 17 items 4 and 8): one node stopped for 15 s mid-run.

The private cluster of ``scripts/cluster.sh`` (c1-c3 on 127.0.0.1:5681-5683; started by the session
fixture when it is not running, and stopped again only if the fixture started it). Each scenario:

* a quorum queue (and its dead-letter queue, quorum too) declared through node L, so L leads it;
* a 2-process worker whose broker list starts with node W, a producer App (sync, confirms) whose list
  starts with node P; L, W and P are three different nodes;
* 2,000 tasks sent one by one, paced at 100/s; after 600 confirmed sends the scenario's node gets
  ``rabbitmqctl stop_app`` (every connection to it drops, its listener closes), and ``start_app``
  15 s later;
* counted: sends that raised, completions, lost (confirmed but never run), duplicates, the longest
  gap between two completions, and the node each client ended on.

Targets: stop P -> 0 sends raised; stop W -> longest gap <= 5 s; stop L -> gap <= 5 s; lost 0 always.
Run with ``pytest -m cluster tests/faults/test_cluster.py -s`` (the table is printed at the end).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pika
import pytest

from amqptasks.errors import AmqpTasksError
from tests.conftest import allow_ports
from tests.faults.conftest import duplicate_causes
from tests.faults.ledger import record, tally, wait_complete
from tests.integration.workerproc import WorkerProcess, write_app

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
NODES = ("c1", "c2", "c3")
PORTS = {"c1": 5681, "c2": 5682, "c3": 5683}
TASKS = 2_000
RATE = 100.0  # sends per second
STOP_AFTER = 600  # confirmed sends before the node stops
DOWN_FOR = 15.0
GAP_TARGET = 5.0
CASCADE = "t.cluster.cascade"  # one quorum delay cascade for every client of the cluster
TABLE: list[str] = []


def url(node: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{PORTS[node]}/%2F"


def urls(first: str) -> str:
    """Every node, ``first`` first, then round-robin: the order a client is given."""
    start = NODES.index(first)
    return ";".join(url(NODES[(start + i) % 3]) for i in range(3))


@dataclass
class Cluster:
    """The private cluster: ``ctl(node, ...)`` is rabbitmqctl -n <node>@localhost through the script."""

    def ctl(self, node: str, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(SCRIPT), "ctl", node, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"cluster.sh ctl {node} {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def answers(self, node: str) -> bool:
        try:
            pika.BlockingConnection(pika.URLParameters(url(node))).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def start_app(self, node: str) -> None:
        subprocess.run([str(SCRIPT), "start", node], check=True, capture_output=True, timeout=300)

    def leader(self, queue: str) -> str:
        for line in self.ctl(self.up_node(), "list_queues", "name", "leader", "-q", "--no-table-headers").splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return leader.strip().split("@")[0]
        raise AssertionError(f"queue {queue} not found on the cluster")

    def up_node(self) -> str:
        return next(node for node in NODES if self.answers(node))

    def delete(self, queues: list[str], exchanges: list[str]) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(url(self.up_node())))
        try:
            for name in queues:
                channel = connection.channel()
                channel.queue_delete(name)
                channel.close()
            for name in exchanges:
                channel = connection.channel()
                channel.exchange_delete(name)
                channel.close()
        finally:
            connection.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The private 3-node cluster, started by scripts/cluster.sh if any node does not answer."""
    allow_ports(*PORTS.values(), *(port + 10000 for port in PORTS.values()))  # these tests' brokers: AMQP and management
    made = Cluster()
    started = not all(made.answers(node) for node in NODES)
    if started:
        done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(f"scripts/cluster.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    try:
        yield made
    finally:
        if started:
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=300, check=False)
        if TABLE:
            print("\nCLUSTER scenario | sent | raised | completed | lost | duplicates | longest gap | producer on | worker on")
            print("\n".join(TABLE), flush=True)


TOPOLOGY = """\
exchanges:
  {q}.dlx: {{type: direct}}
queues:
  {q}:
    type: quorum
    dead_letter: {{exchange: {q}.dlx, routing_key: {q}.dead}}
  {q}.dead:
    type: quorum
    bindings: [{{exchange: {q}.dlx, routing_key: {q}.dead}}]
"""

# one line per execution for the ledger, and when it ran for the gaps
TASK = """
@app.task(queue=QUEUE, bind=True)
def work(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")
    with open(TIMES, "a") as f:
        f.write(f"{time.time()}\\n")
"""


@dataclass
class Sends:
    confirmed: list[str] = field(default_factory=list)
    raised: dict[str, str] = field(default_factory=dict)
    unexpected: list[BaseException] = field(default_factory=list)
    slowest: float = 0.0


def produce(tasks: ModuleType, sends: Sends, stop: threading.Event) -> None:
    """TASKS sends, one by one, at RATE per second; a raise is recorded (and the send not repeated)."""
    began = time.monotonic()
    for n in range(TASKS):
        if stop.is_set():
            return
        pause = began + n / RATE - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        task_id = f"cluster-{n:05d}"
        start = time.monotonic()
        try:
            tasks.work.apply_async(args=(n,), task_id=task_id)
        except AmqpTasksError as exc:
            sends.raised[task_id] = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # a bug: recorded and failed on in the test body
            sends.unexpected.append(exc)
            return
        else:
            sends.confirmed.append(task_id)
        finally:
            sends.slowest = max(sends.slowest, time.monotonic() - start)


def produce_async(tasks: ModuleType, sends: Sends, stop: threading.Event, ended_on: list[str]) -> None:
    """As :func:`produce`, with ``await work.aapply_async`` on one event loop (the async publisher)."""

    async def main() -> None:
        began = time.monotonic()
        try:
            for n in range(TASKS):
                if stop.is_set():
                    return
                pause = began + n / RATE - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                task_id = f"cluster-{n:05d}"
                start = time.monotonic()
                try:
                    await tasks.work.aapply_async(args=(n,), task_id=task_id)
                except AmqpTasksError as exc:
                    sends.raised[task_id] = f"{type(exc).__name__}: {exc}"
                else:
                    sends.confirmed.append(task_id)
                finally:
                    sends.slowest = max(sends.slowest, time.monotonic() - start)
        except BaseException as exc:  # a bug: recorded and failed on in the test body
            sends.unexpected.append(exc)
        finally:
            ended_on.extend(p.address.where for p in tasks.app._async._producers.values())
            await tasks.app.aclose()

    asyncio.run(main())


def longest_gap(times_file: Path) -> float:
    times = sorted(float(line) for line in times_file.read_text().split())
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def declare_on(node: str, topology: Path) -> None:
    """Declare the scenario's queues through ``node`` (quorum leaders are placed client-local)."""
    from amqptasks.core.loader import load_topology
    from amqptasks.settings import Settings
    from amqptasks.sync.connection import connect
    from amqptasks.sync.topology import provision

    connection = connect(Settings(broker_url=url(node)), "amqptasks cluster test declare")
    try:
        provision(connection, load_topology([topology]), management_url="off")
    finally:
        connection.close()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("victim", ["producer", "async producer", "worker", "leader"])
def test_cluster_failover(
    cluster: Cluster, victim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = uuid.uuid4().hex[:8]
    module, queue = f"cluster_{token}", f"t.cluster.{token}"
    topology = write_app(tmp_path, module, queue, f"QUEUE = {queue!r}\nTIMES = {str(tmp_path / 'times.txt')!r}\n" + TASK)
    topology.write_text(TOPOLOGY.format(q=queue))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, value in {"AMQPTASKS_MANAGEMENT_URL": "off", "AMQPTASKS_DELAY_PREFIX": CASCADE,
                        "AMQPTASKS_DELAY_QUEUE_TYPE": "quorum"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    leader_wanted = "c3"
    declare_on(leader_wanted, topology)
    leader = cluster.leader(queue)
    worker_node, producer_node = [node for node in NODES if node != leader]
    target = {"producer": producer_node, "async producer": producer_node, "worker": worker_node, "leader": leader}[victim]
    monkeypatch.setenv("AMQPTASKS_BROKER_URL", urls(producer_node))  # the producer App reads it at import

    started = time.monotonic()
    worker = WorkerProcess(tmp_path, urls(worker_node), "-A", module, "--queues", queue, "--processes", "2", "--loglevel", "info")
    tasks: ModuleType | None = None
    stop = threading.Event()
    sends = Sends()
    producer: threading.Thread | None = None
    stopped = False
    try:
        deadline = time.monotonic() + 120
        while worker.log.count("ready: consuming") < 2:
            assert worker.process.poll() is None and time.monotonic() < deadline, f"worker did not start:\n{worker.log[-3000:]}"
            time.sleep(0.2)
        sys.modules.pop(module, None)
        importlib.invalidate_caches()
        tasks = importlib.import_module(module)
        ended_on: list[str] = []
        if victim == "async producer":
            producer = threading.Thread(target=produce_async, args=(tasks, sends, stop, ended_on), name="cluster-producer", daemon=True)
        else:
            producer = threading.Thread(target=produce, args=(tasks, sends, stop), name="cluster-producer", daemon=True)
        producer.start()
        while len(sends.confirmed) + len(sends.raised) < STOP_AFTER and producer.is_alive():
            time.sleep(0.01)
        cluster.ctl(target, "stop_app")
        stopped = True
        down_at = time.monotonic()
        time.sleep(DOWN_FOR)
        cluster.start_app(target)
        stopped = False
        down = time.monotonic() - down_at
        producer.join(timeout=180)
        assert not producer.is_alive(), "the producer hung"
        assert not sends.unexpected, f"a send raised something other than an AmqpTasksError: {sends.unexpected!r}"
        wait_complete(sends.confirmed, tmp_path / "done.txt", timeout=120)
        on = ended_on if victim == "async producer" else [p.address.where for p in tasks.app._sync._current().all]
        producer_on = ", ".join(sorted(set(on))) or "-"
        gap = longest_gap(tmp_path / "times.txt")
        assert worker.process.poll() is None, f"the worker exited:\n{worker.log[-3000:]}"
        worker_on = ", ".join(re.findall(r"(Worker-\d) connected to the broker node at (\S+)", worker.log)[-2:][i][1] for i in range(2))
        raised = sorted(set(sends.raised.values()))
        result = record(
            tally(
                f"cluster: stop the {victim}'s node",
                sends.confirmed,
                tmp_path / "done.txt",
                started,
                detail=(
                    f"stopped {target}{' (the leader)' if target == leader else ''} for {down:.1f}s; producer {producer_node} first, "
                    f"worker {worker_node} first, leader {leader}; {len(sends.raised)} sends raised; longest gap {gap:.2f}s; "
                    f"slowest send {sends.slowest:.2f}s; producer ended on {producer_on}, worker on {worker_on}; "
                    f"duplicates: {duplicate_causes(tmp_path / 'done.txt', set())}"
                ),
            )
        )
        TABLE.append(
            f"stop the {victim}'s node ({target}) | {TASKS} | {len(sends.raised)} | {result.completed} | {result.lost} | "
            f"{result.duplicates} | {gap:.2f} s | {producer_on} | {worker_on}"
        )
        assert result.lost == 0, f"{result.lost} confirmed task(s) vanished\n{worker.log[-3000:]}"
        assert len(sends.confirmed) + len(sends.raised) == TASKS
        if victim in ("producer", "async producer"):
            assert not sends.raised, f"sends raised: {raised}"
            assert PORTS[target] not in {int(w.rsplit(':', 1)[1]) for w in producer_on.split(", ")}
        else:
            assert gap <= GAP_TARGET, f"longest gap between completions {gap:.2f}s > {GAP_TARGET}s\n{worker.log[-3000:]}"
        if victim == "worker":
            assert f"127.0.0.1:{PORTS[target]}" not in worker_on, worker_on
    finally:
        stop.set()
        if stopped:
            cluster.start_app(target)
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        if tasks is not None:
            tasks.app.close()
            sys.modules.pop(module, None)
        if worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        worker.stop()
        if os.environ.get("CLUSTER_KEEP_LOGS"):
            print(worker.log)
        try:
            cluster.delete([queue, f"{queue}.dead"], [f"{queue}.dlx"])
        except pika.exceptions.AMQPError as exc:
            print(f"cleanup of {queue} failed: {exc!r}")
