"""Count every task of a fault scenario from send to completion: lost must be 0, duplicates counted.

Tasks in a scenario append one line per execution to a file: ``<task id> <redelivered 0|1>``.
The ledger compares those lines with the ids the producer got confirmed, prints one summary line
(``FAULTS <scenario>: ...``, visible with ``pytest -s`` and in the CI log) and appends the figures
to a JSON file, one entry per scenario.

Where: ``.pytest_cache/amqptasks/faults-last-run.json`` (untracked, gitignored), so a test run leaves
the checkout clean. ``results/faults-last-run.json`` is the committed record that
``docs/reliability.md`` quotes; to refresh it, run the fault suite with
``AMQPTASKS_FAULTS_RECORD=results/faults-last-run.json`` and commit the file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "faults-last-run.json"  # the committed record (docs/reliability.md)
# A test run writes under .pytest_cache (gitignored) unless asked to refresh the committed record.
RESULTS = ROOT / os.environ.get("AMQPTASKS_FAULTS_RECORD", ".pytest_cache/amqptasks/faults-last-run.json")


@dataclass(frozen=True)
class Tally:
    """What one scenario sent, what completed, what was lost and what ran more than once."""

    scenario: str
    sent: int
    completed: int
    lost: int
    duplicates: int
    redelivered: int
    seconds: float
    detail: str = ""

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"FAULTS {self.scenario}: sent={self.sent} completed={self.completed} lost={self.lost} "
            f"duplicates={self.duplicates} redelivered={self.redelivered} in {self.seconds:.1f}s{extra}"
        )


def read_done(path: Path) -> list[tuple[str, bool]]:
    """The ``(task id, redelivered)`` executions recorded in ``path`` (missing file: none)."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        task_id, _, flag = line.partition(" ")
        if task_id:
            runs.append((task_id, flag.strip() == "1"))
    return runs


def tally(scenario: str, sent_ids: Iterable[str], done: Path, started: float, detail: str = "") -> Tally:
    """Compare confirmed sends with recorded executions; ``started`` is a ``time.monotonic()``."""
    sent = set(sent_ids)
    runs = read_done(done)
    counts = Counter(task_id for task_id, _ in runs)
    completed = sent & counts.keys()
    return Tally(
        scenario=scenario,
        sent=len(sent),
        completed=len(completed),
        lost=len(sent - completed),
        duplicates=sum(n - 1 for task_id, n in counts.items() if task_id in sent and n > 1),
        redelivered=sum(1 for _, again in runs if again),
        seconds=time.monotonic() - started,
        detail=detail,
    )


def record(result: Tally) -> Tally:
    """Print the summary line and keep it in :data:`RESULTS` (one entry per scenario)."""
    print(result.line(), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    except ValueError:
        runs = {}
    runs[result.scenario] = asdict(result) | {"recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
    RESULTS.write_text(json.dumps(runs, indent=2, sort_keys=True) + "\n")
    return result


def wait_complete(sent_ids: Iterable[str], done: Path, timeout: float) -> None:
    """Wait until every sent id has at least one recorded execution, or ``timeout`` seconds pass."""
    wanted = set(sent_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= {task_id for task_id, _ in read_done(done)}:
            return
        time.sleep(0.2)
