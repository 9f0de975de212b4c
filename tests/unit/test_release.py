"""A handed-back copy does not carry the broker's delivery headers (worker/release.py)."""

from __future__ import annotations

from amqptasks.worker.release import fresh_headers


def test_the_brokers_delivery_count_is_not_copied_and_the_rest_is() -> None:
    headers = {"id": "t1", "task": "tasks.add", "retries": 2, "x-delivery-count": 7, "x-death": [{"reason": "expired"}]}
    assert fresh_headers(headers) == {"id": "t1", "task": "tasks.add", "retries": 2, "x-death": [{"reason": "expired"}]}
    assert fresh_headers(None) == {}
