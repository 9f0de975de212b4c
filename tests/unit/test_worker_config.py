import os

import pytest

from amqptasks.errors import ConfigurationError
from amqptasks.worker.config import DEFAULT_PREFETCH_PER_THREAD, WorkerConfig


def test_defaults_follow_cpu_count_and_threads() -> None:
    config = WorkerConfig()
    assert config.queues == ("celery",)
    assert config.processes == (os.cpu_count() or 1)
    assert config.prefetch == config.threads * DEFAULT_PREFETCH_PER_THREAD


def test_queue_list_parsing_ignores_blanks() -> None:
    assert WorkerConfig.parse_queues("celery, emails,,") == ("celery", " emails")
    assert WorkerConfig(queues=WorkerConfig.parse_queues("celery, emails,,")).queues == ("celery", "emails")


@pytest.mark.parametrize(
    "kwargs",
    [{"queues": ()}, {"threads": 0}, {"processes": -1}, {"prefetch": -1}, {"grace": -1.0}],
)
def test_bad_values_are_rejected_with_the_option_named(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError, match="--"):
        WorkerConfig(**kwargs)
