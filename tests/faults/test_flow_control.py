"""Scenario 5: flow control. A memory alarm on the broker blocks every publishing connection.

``set_vm_memory_high_watermark`` on the private node raises the alarm while producers send and a
worker consumes, and lowers it again after ALARM_FOR seconds. A send may block and then succeed,
or raise an AmqpTasksError; it must never take longer than the bound its settings give, and
no confirmed task may vanish (raised ones are sent again, same id, after the alarm).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

import pytest

from amqptasks.errors import AmqpTasksError, PublishTimeout
from amqptasks.settings import Settings
from tests.faults.conftest import FaultApp, FaultBroker, duplicate_causes
from tests.faults.ledger import record, tally, wait_complete
from tests.faults.scenario import stop_worker

CONFIRM_TIMEOUT = 3.0  # AMQPTASKS_CONFIRM_TIMEOUT for the producers here: the alarm outlasts it
ALARM_FOR = 10.0  # seconds the memory alarm stays raised
ALARM_AFTER = 300  # confirmed sends before the alarm
AFTER_ALARM = 300  # sends after the alarm is lowered (the producer must carry on by itself)
MAX_TASKS = 20_000  # a cap in case the alarm never comes


def send_bound(settings: Settings) -> float:
    """The longest one send may take: each attempt (the first and every reconnect) may wait for a
    connection and then for its confirm, with the reconnect back-off in between; +2 s of slack."""
    attempts = settings.reconnect_attempts + 1
    backoff = sum(settings.reconnect_delay * n for n in range(1, attempts))
    return attempts * (settings.connect_timeout + settings.confirm_timeout) + backoff + 2.0


@dataclass
class Sends:
    """Every send: when it started, how long it took, and what came of it."""

    confirmed: list[str] = field(default_factory=list)
    raised: dict[str, str] = field(default_factory=dict)  # task id -> exception type
    errors: list[tuple[float, AmqpTasksError]] = field(default_factory=list)  # (seconds, error)
    unexpected: list[BaseException] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)  # seconds of sends that blocked, then succeeded
    durations: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)

    def note(self, task_id: str, began: float, error: BaseException | None) -> None:
        seconds = time.monotonic() - began
        self.durations.append((began, seconds))
        if error is None:
            self.confirmed.append(task_id)
            if seconds > 0.5:  # waited for the alarm to clear, then confirmed
                self.waited.append(seconds)
        elif isinstance(error, AmqpTasksError):
            self.raised[task_id] = type(error).__name__
            self.errors.append((seconds, error))
        else:
            self.unexpected.append(error)

    def during(self, start: float, end: float) -> list[float]:
        """Durations of the sends that started between ``start`` and ``end``."""
        return [seconds for began, seconds in self.durations if start <= began <= end]

    def slowest(self) -> float:
        return max((seconds for _began, seconds in self.durations), default=0.0)


class Alarm:
    """The memory alarm of the private node, raised and lowered from a background thread."""

    def __init__(self, broker: FaultBroker) -> None:
        self.broker = broker
        self.raised_at = 0.0
        self.lowered_at = 0.0

    def raise_then_lower(self, after: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not after() and time.monotonic() < deadline:
            time.sleep(0.01)
        # A watermark this small is below what any node uses: the alarm fires during the call
        # (which starts an Erlang VM: a second or more), so its window opens before it.
        self.raised_at = time.monotonic()
        self.broker.ctl("set_vm_memory_high_watermark", "0.0000001")
        time.sleep(ALARM_FOR)
        self.lower()

    def keep_sending(self, sends: Sends) -> bool:
        """Until AFTER_ALARM sends have started after the alarm was lowered."""
        if len(sends.durations) >= MAX_TASKS:
            return False
        return not self.lowered_at or len(sends.during(self.lowered_at, float("inf"))) < AFTER_ALARM

    def lower(self) -> None:
        self.broker.ctl("set_vm_memory_high_watermark", "0.4")  # RabbitMQ's default
        if not self.lowered_at:
            self.lowered_at = time.monotonic()


def finish(
    scenario: str, app: FaultApp, sends: Sends, alarm: Alarm, started: float, bound: float, *, resend: Callable[[str], None]
) -> None:
    """Send again what raised, wait for every task, record the figures and check the promises."""
    assert not sends.unexpected, f"a send raised something other than an AmqpTasksError: {sends.unexpected!r}"
    for task_id in sends.raised:
        resend(task_id)
    sent_ids = sends.confirmed + list(sends.raised)
    wait_complete(sent_ids, app.done, timeout=60)
    blocked = sends.during(alarm.raised_at, alarm.lowered_at)
    kinds = ", ".join(sorted(set(sends.raised.values()))) or "none"
    result = record(
        tally(
            scenario,
            sent_ids,
            app.done,
            started,
            detail=(
                f"alarm {alarm.lowered_at - alarm.raised_at:.1f}s; {len(blocked)} sends started under it, "
                f"slowest {max(blocked, default=0):.1f}s (bound {bound:.0f}s); {len(sends.waited)} blocked then succeeded "
                f"(longest {max(sends.waited, default=0):.1f}s); {len(sends.raised)} raised ({kinds}), re-sent; "
                f"duplicates: {duplicate_causes(app.done, set(sends.raised))}"
            ),
        )
    )
    assert result.lost == 0, f"{result.lost} confirmed task(s) vanished"
    assert sends.slowest() <= bound, f"a send took {sends.slowest():.1f}s, more than its settings allow ({bound:.1f}s)"
    assert blocked, "no send started while the alarm was up: the scenario did not test flow control"
    where = f"127.0.0.1:{app.broker.port}"
    for seconds, error in sends.errors:
        # A clear error: it names the broker and, for a timeout, the likely cause; and it comes
        # when the confirm timeout says, not at the end of the whole retry budget.
        assert where in str(error), error
        if isinstance(error, PublishTimeout):
            assert "memory or disk alarm" in str(error) and "may still be delivered" in str(error), error
            assert seconds <= CONFIRM_TIMEOUT + 2.0, f"PublishTimeout after {seconds:.1f}s: {error}"


@dataclass
class FlowRun:
    """One scenario's producer app, alarm and send log, with a worker consuming its queue."""

    app: FaultApp
    alarm: Alarm
    sends: Sends
    tasks: ModuleType
    bound: float
    started: float


@pytest.fixture
def flow(
    fault_broker: FaultBroker, fault_app: Callable[..., FaultApp], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlowRun]:
    monkeypatch.setenv("AMQPTASKS_CONFIRM_TIMEOUT", str(CONFIRM_TIMEOUT))
    app = fault_app()
    started = time.monotonic()
    worker = app.worker(processes=1)
    alarm = Alarm(fault_broker)
    tasks: ModuleType | None = None
    try:
        worker.wait_consuming(app.queue, timeout=60)
        tasks = app.import_tasks()
        yield FlowRun(app, alarm, Sends(), tasks, send_bound(tasks.app.settings), started)
    finally:
        alarm.lower()
        if tasks is not None:
            app.close(tasks)
        stop_worker(worker, timeout=40)


@pytest.mark.timeout(150)
def test_sync_producer_under_a_memory_alarm(flow: FlowRun) -> None:
    alarm, sends, tasks = flow.alarm, flow.sends, flow.tasks
    raiser = threading.Thread(target=alarm.raise_then_lower, args=(lambda: len(sends.confirmed) >= ALARM_AFTER,), daemon=True)
    raiser.start()
    n = 0
    while alarm.keep_sending(sends):
        n += 1
        task_id = f"flow-sync-{n:05d}"
        began = time.monotonic()
        try:
            tasks.work.apply_async(args=(n,), task_id=task_id)
        except BaseException as exc:  # sorted out by note(): AmqpTasksError or a bug
            sends.note(task_id, began, exc)
            if not isinstance(exc, AmqpTasksError):
                break
        else:
            sends.note(task_id, began, None)
        if alarm.raised_at and not alarm.lowered_at:
            time.sleep(0.05)  # under the alarm: a steady trickle, not thousands of raises
    raiser.join(timeout=60)
    assert alarm.lowered_at, "the alarm was never raised or lowered"
    finish("5 flow control (sync)", flow.app, sends, alarm, flow.started, flow.bound,
           resend=lambda task_id: tasks.work.apply_async(args=(int(task_id.rsplit("-", 1)[1]),), task_id=task_id))  # fmt: skip


@pytest.mark.timeout(150)
def test_async_producer_under_a_memory_alarm(flow: FlowRun) -> None:
    alarm, sends, tasks = flow.alarm, flow.sends, flow.tasks

    async def produce() -> None:
        raiser = asyncio.create_task(asyncio.to_thread(alarm.raise_then_lower, lambda: len(sends.confirmed) >= ALARM_AFTER))
        n = 0
        while alarm.keep_sending(sends):
            n += 1
            task_id = f"flow-async-{n:05d}"
            began = time.monotonic()
            try:
                # The test's own limit is far above the bound: a hang shows as a bound failure.
                await asyncio.wait_for(tasks.work.aapply_async(args=(n,), task_id=task_id), timeout=flow.bound * 3)
            except TimeoutError as exc:
                sends.note(task_id, began, exc)
                break
            except AmqpTasksError as exc:
                sends.note(task_id, began, exc)
            else:
                sends.note(task_id, began, None)
            if alarm.raised_at and not alarm.lowered_at:
                await asyncio.sleep(0.05)
        await raiser
        for task_id in list(sends.raised):  # after the alarm: the caller's own re-send
            await tasks.work.aapply_async(args=(int(task_id.rsplit("-", 1)[1]),), task_id=task_id)
        await tasks.app.aclose()

    asyncio.run(produce())
    assert alarm.lowered_at, "the alarm was never raised or lowered"
    finish("5 flow control (async)", flow.app, sends, alarm, flow.started, flow.bound, resend=lambda _task_id: None)
