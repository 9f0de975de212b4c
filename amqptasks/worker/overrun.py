"""Tasks that outlive the broker's ``consumer_timeout``: noticed once, dead-lettered when they come back.

A delivery left unacked longer than the broker's delivery acknowledgement timeout (``consumer_timeout``,
30 minutes by default; per queue with the ``consumer-timeout`` policy key on RabbitMQ 3.11.15+) makes
the broker close the whole channel with ``PRECONDITION_FAILED - delivery acknowledgement on channel N
timed out. Timeout value used: T ms`` and requeue everything unacked on it. The task keeps running
on its thread, but its ack can no longer be sent: the message comes back, runs again, times out
again - for ever on a classic queue, until the delivery limit on a quorum queue (measured:
tests/faults/test_consumer_timeout.py).

So the worker remembers which tasks were running when their channel closed that way (those
taken at least the timeout before; the longest running only when the broker did not say its
timeout), and when such a task comes
back to the same worker process it is dead-lettered with reason ``consumer_timeout: ...`` (and its
caller gets that error) instead of running again. Each worker process runs it at most once. The
cure is a longer timeout for that queue (README "RabbitMQ 4": consumer_timeout).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable

#: The broker's words when it closes a channel for an unacked delivery (3.10 to 4.x).
_TIMED_OUT = re.compile(r"delivery acknowledgement on channel \d+ timed out(?:\. Timeout value used: (\d+) ms)?")
_REMEMBERED = 10_000  # task ids kept (oldest forgotten first): a bound on memory, not on correctness


class Overruns:
    """Which of this process's tasks outran the consumer timeout (pure bookkeeping, no I/O)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._running: dict[str, float] = {}  # task id -> when it started
        self._timed_out: OrderedDict[str, str] = OrderedDict()  # task id -> dead-letter reason

    def started(self, task_id: str) -> None:
        self._running[task_id] = self._now()

    def finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)

    def channel_closed(self, exc: BaseException | None) -> list[str]:
        """Note a channel or connection close; when it is a delivery acknowledgement timeout, the
        ids of the running tasks it is blamed on (and remembered)."""
        found = _TIMED_OUT.search(str(exc)) if exc is not None else None
        if found is None or not self._running:
            return []
        now = self._now()
        timeout_ms = int(found.group(1)) if found.group(1) else None
        if timeout_ms is None:  # an older broker's words without the value: the longest running
            blamed = [min(self._running, key=self._running.__getitem__)]
        else:  # ours start when the delivery is taken, a little after the broker's clock did
            slack_ms = min(1000.0, timeout_ms / 20)
            blamed = [task_id for task_id, began in self._running.items() if (now - began) * 1000 >= timeout_ms - slack_ms]
        limit = f"{timeout_ms} ms" if timeout_ms is not None else "its limit"
        for task_id in blamed:
            self._timed_out[task_id] = (
                f"consumer_timeout: ran longer than the broker's delivery acknowledgement timeout ({limit}), "
                "which closed the channel; not run again. Give this queue a longer timeout (policy key "
                "consumer-timeout, RabbitMQ 3.11.15+) or the broker a longer consumer_timeout, or split the task"
            )
            self._timed_out.move_to_end(task_id)
        while len(self._timed_out) > _REMEMBERED:
            self._timed_out.popitem(last=False)
        return blamed

    def reason_for(self, task_id: str) -> str | None:
        """The dead-letter reason when ``task_id`` timed out here before, else None."""
        return self._timed_out.get(task_id)

    def _now(self) -> float:
        return self._clock()
