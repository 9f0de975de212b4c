"""The worker's settings, validated when made."""

from __future__ import annotations

import os
from dataclasses import dataclass

from amqptasks.errors import ConfigurationError

# Chosen by measurement (scripts/bench_worker.py): see the README's "Worker defaults".
DEFAULT_THREADS = 8
DEFAULT_PREFETCH_PER_THREAD = 4


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker runs: which queues, how many processes and threads, prefetch, grace, burst, inline."""

    queues: tuple[str, ...] = ("celery",)
    processes: int = 0  # 0: one per CPU
    threads: int = DEFAULT_THREADS
    prefetch: int = 0  # 0: threads * DEFAULT_PREFETCH_PER_THREAD
    grace: float = 30.0
    burst: bool = False
    inline: bool = True  # plain tasks proven instant run on the event loop (worker/inline.py)

    def __post_init__(self) -> None:
        queues = tuple(q.strip() for q in self.queues if q.strip())
        if not queues:
            raise ConfigurationError("--queues names no queue; give at least one, e.g. --queues celery")
        object.__setattr__(self, "queues", queues)
        if self.processes < 0 or self.threads < 1 or self.prefetch < 0:
            raise ConfigurationError("--processes must be >= 0, --threads >= 1 and --prefetch >= 0")
        if self.grace < 0:
            raise ConfigurationError("--grace must be 0 or more seconds")
        if self.processes == 0:
            object.__setattr__(self, "processes", os.cpu_count() or 1)
        if self.prefetch == 0:
            object.__setattr__(self, "prefetch", self.threads * DEFAULT_PREFETCH_PER_THREAD)

    @staticmethod
    def parse_queues(value: str) -> tuple[str, ...]:
        return tuple(part for part in value.split(",") if part.strip())
