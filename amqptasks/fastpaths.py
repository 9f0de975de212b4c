"""The one switch for every fast path that reaches under pika, aiormq, aio-pika or pamqp.

``AMQPTASKS_FAST_PATHS=0`` leaves only their public API in use: no direct socket writes or reads
(sync/direct.py), no tap under aiormq's transport (aio/tap.py), no hand-encoded frames
(core/frames.py via aio/outbox.py, worker/replies.py, worker/acks.py, sync/producer.py). Unset, or ``1``: all on (the default). The
internals each fast path uses, why, what it gains and which test notices a change are listed in
docs/internals.md.

Read when a connection is made (:func:`enabled`), so a process can be started with the fast paths
off without any code change; never cached in a global.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from amqptasks.errors import ConfigurationError

#: The environment variable.
ENV = "AMQPTASKS_FAST_PATHS"

_ON = frozenset({"", "1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the fast paths are on (``AMQPTASKS_FAST_PATHS`` unset, or 1/true/yes/on)."""
    value = (os.environ if environ is None else environ).get(ENV, "1").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigurationError(
        f"{ENV}={value!r} is not understood: set it to 1 (fast paths on, the default) or 0 (public API only)"
    )
