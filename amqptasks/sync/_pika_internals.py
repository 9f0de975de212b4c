"""The typed boundary to pika's private attributes that the sync side relies on.

Each function here is the one place one private attribute of pika is read, so that mypy checks every
caller and a rename in pika shows up in one file. Which internal, why, the fallback and the test that
notices a change: docs/internals.md, the row named at each function. types-pika does not declare
these attributes (they are private), hence one ``type: ignore[attr-defined]`` per function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika.channel
import pika.connection
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection


def connection_impl(connection: BlockingConnection) -> Any:
    """The asynchronous connection under ``connection`` (docs/internals.md rows 9, 10, 12).

    Typed ``Any``: sync/direct.py reaches further into it only through ``getattr``/``hasattr``
    checks that fall back to pika's own I/O (row 9).
    """
    return connection._impl  # type: ignore[attr-defined]


def connection_params(connection: BlockingConnection) -> pika.connection.Parameters:
    """The parameters ``connection`` was opened with; pika exposes them only on ``_impl`` (row 12)."""
    params: pika.connection.Parameters = connection_impl(connection).params
    return params


def channel_impl(channel: BlockingChannel) -> pika.channel.Channel:
    """The callback-level channel under ``channel``, for pipelined confirms (docs/internals.md row 11)."""
    impl: pika.channel.Channel = channel._impl  # type: ignore[attr-defined]
    return impl


def call_later(connection: BlockingConnection, delay: float, callback: Callable[[], None]) -> object:
    """A timer on pika's ioloop (``impl._adapter_call_later``, docs/internals.md row 10); remove it with :func:`remove_timeout`."""
    timer: object = connection_impl(connection)._adapter_call_later(delay, callback)
    return timer


def remove_timeout(connection: BlockingConnection, timer: object) -> None:
    """Cancel a timer of :func:`call_later` (``impl._adapter_remove_timeout``, docs/internals.md row 10)."""
    connection_impl(connection)._adapter_remove_timeout(timer)


def flush_output(connection: BlockingConnection, *waiters: Callable[[], bool]) -> None:
    """Turn pika's ioloop until one of ``waiters`` is true (``BlockingConnection._flush_output``, docs/internals.md row 10)."""
    connection._flush_output(*waiters)  # type: ignore[attr-defined]


def process_data_events(connection: BlockingConnection, time_limit: float) -> None:
    """``connection.process_data_events`` with a fractional limit: public in pika, which takes a float;
    types-pika 1.2.0b1 declares ``int``."""
    connection.process_data_events(time_limit=time_limit)  # type: ignore[arg-type]
