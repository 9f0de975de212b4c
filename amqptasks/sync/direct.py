"""Direct socket I/O for a pika connection on the confirmed send's hot path.

A confirmed single send is one round trip: write a message, wait for its ``basic.ack``. Through
pika's I/O loop the write costs a poll for writability and two epoll changes first, and the
wait a poll with timer bookkeeping. Here:

* a message's frames (method, header, body; encoded by core/frames.py, or by pika for what that
  leaves alone) go out in **one** write instead of pika's three, and on a plaintext connection
  with nothing buffered before them, **at once**;
* waiting for confirms polls the socket directly. What is waiting is peeked at: whole
  ``basic.ack`` frames and complete replies at its head are read and settled here
  (core/inbound.py parses them); anything else is left to pika's own reader (``transport._on_socket_readable``), so other frames, our other
  callbacks, end of file and socket errors are all handled by pika as usual. Every pump of a producer's connection starts here: the
  wait for confirms and a get() waiting for its reply.

Whatever falls outside that — TLS, a wake from another thread, a partial write, a socket quiet for longer than a round trip,
a transport no longer active — goes back to pika's loop, which also runs pika's timers. Patched on
our own connection objects only; if a pika release renames these internals, pika's behaviour
stays. Measured in ``scripts/bench_publish.py``. With ``AMQPTASKS_FAST_PATHS=0``
(amqptasks/fastpaths.py) none of this is installed: :attr:`DirectSocket.active` is False, pika
writes and reads everything, and producers let pika encode every message (``frame_max`` None).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.adapters.utils import io_services_utils

from amqptasks import fastpaths
from amqptasks.core.envelope import Properties
from amqptasks.core.frames import FRAME_OVERHEAD, encode_properties
from amqptasks.core.inbound import Ack, read_confirms_and_replies
from amqptasks.sync._pika_internals import connection_impl

QUIET = 0.05  # seconds without a byte after which the wait goes back to pika's loop
PEEK_BYTES = 4096  # looked at before deciding who reads: an ack is 21 bytes, a small reply ~200
# None if a pika release renames it: then every wait is pika's own.
_PLAINTEXT: Any = getattr(io_services_utils, "_AsyncPlaintextTransport", None)


class EncodedProperties(pika.BasicProperties):
    """pika's message properties whose content header core/frames.py writes: pika cannot encode a
    float header at all, and this keeps every header type ``send()`` accepts working when pika
    encodes the message (``AMQPTASKS_FAST_PATHS=0``, or a message the direct path leaves to
    pika). ``encode()`` is pika's public method; per object, nothing changes for other pika users."""

    def __init__(self, properties: Properties) -> None:
        super().__init__(**properties.client_fields())
        self._ours = properties

    def encode(self) -> list[bytes]:
        data = encode_properties(self._ours)
        return [data] if data is not None else list(super().encode())  # pika reports what it cannot encode


class DirectSocket:
    """Installs the joined (and, in plaintext, immediate) write; :meth:`wait` reads directly."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._impl: Any = connection_impl(connection)
        #: The fast paths are in use on this connection (AMQPTASKS_FAST_PATHS, read once here).
        self.active = fastpaths.enabled()
        transport: Any = getattr(self._impl, "_transport", None) if self.active else None
        plain = _PLAINTEXT is not None and type(transport) is _PLAINTEXT and all(
            hasattr(transport, name) for name in ("_sock", "_state", "_STATE_ACTIVE", "get_write_buffer_size", "_on_socket_readable")
        )
        self._transport: Any = transport if plain else None
        # pika's loop is woken from other threads through a pipe (add_callback_threadsafe, e.g. a
        # publisher asking a waiting get() for the connection): watched too, so a wake is never late.
        wake: Any = getattr(getattr(getattr(self._impl, "ioloop", None), "_poller", None), "_r_interrupt", None)
        self._poller: Any = None
        self._fd = -1
        self._channel = 0
        self._on_ack: Callable[[int, bool], None] | None = None
        self._reply_tag: str | None = None
        self._on_reply: Callable[[str | None, bytes], None] = _no_reply
        if self._transport is not None and wake is not None:
            self._fd = self._transport._sock.fileno()
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)
            self._poller.register(wake.fileno(), select.POLLIN)
        else:
            self._transport = None
        if self.active and hasattr(self._impl, "_adapter_emit_data") and hasattr(self._impl, "_output_marshaled_frames"):
            self._impl._output_marshaled_frames = self._write

    def _clear(self) -> bool:
        """The transport is ours to use directly: plaintext, active, nothing waiting to be sent."""
        transport = self._transport
        return transport is not None and transport._state == transport._STATE_ACTIVE and transport.get_write_buffer_size() == 0

    @property
    def frame_max(self) -> int | None:
        """The connection's negotiated frame size, for frames we encode ourselves (None: unknown)."""
        if not self.active:
            return None  # pika encodes every message
        body_max = getattr(self._impl, "_body_max_length", None)
        return body_max + FRAME_OVERHEAD if isinstance(body_max, int) and body_max > 0 else None

    def _write(self, frames: Sequence[bytes]) -> None:
        self.send(b"".join(frames), len(frames))

    def send(self, data: bytes, frames: int = 3) -> None:
        """Write encoded frames (``frames`` of them) after whatever pika has buffered."""
        impl = self._impl
        impl.bytes_sent += len(data)  # pika's heartbeat checker reads these
        impl.frames_sent += frames
        if self._clear():
            try:
                sent = self._transport._sock.send(data)
            except OSError:  # would block, or broken: pika's writer meets it and handles it its way
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        impl._adapter_emit_data(data)

    def wait(self, done: Callable[[], bool], deadline: float) -> None:
        """Read straight off the socket until ``done()``, the deadline, a quiet spell or a wake.

        Returns without raising in every case but one (an error raised by pika's reader); the
        caller then pumps pika's loop, which reports what happened to the connection and runs
        what a wake asked for.
        """
        poll = self._poller
        while not done() and self._clear():
            quiet = min(QUIET, deadline - time.monotonic())
            if quiet <= 0:
                return
            events = poll.poll(quiet * 1000)
            if not events:
                return
            woken = False
            for fd, _event in events:
                if fd != self._fd:
                    woken = True
                elif not self._read_direct():
                    self._transport._on_socket_readable()
            if woken:
                return

    def take_acks(self, channel: int, on_ack: Callable[[int, bool], None]) -> None:
        """Settle ``basic.ack`` frames of ``channel`` by calling ``on_ack(tag, multiple)`` directly."""
        self._channel, self._on_ack = channel, on_ack

    def take_replies(self, consumer_tag: str, on_reply: Callable[[str | None, bytes], None]) -> None:
        """Hand deliveries to ``consumer_tag`` (on the acks' channel, no-ack) to ``on_reply(correlation_id, body)``."""
        self._reply_tag, self._on_reply = consumer_tag, on_reply

    def _read_direct(self) -> bool:
        """Read the confirms and replies at the head of the socket ourselves (pika's reader costs
        several times more for them: about half a round trip's client CPU for a reply); False when
        what is waiting starts with anything else, which pika then reads."""
        if self._on_ack is None or self._impl._frame_buffer:  # pika holds part of a frame
            return False
        sock = self._transport._sock
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except OSError:  # pika's reader meets it again and handles it its way
            return False
        taken, items = read_confirms_and_replies(data, self._channel, self._reply_tag)
        if not taken:
            return False
        if sock.recv(taken) != data[:taken]:  # cannot happen with TCP: the bytes were already there
            raise ConnectionError("the socket returned other bytes than it showed")
        self._impl.bytes_received += taken  # pika's heartbeat checker reads this
        for item in items:
            if isinstance(item, Ack):
                self._on_ack(item.tag, item.multiple)
            else:
                self._on_reply(item.correlation_id, item.body)
        return True


def _no_reply(_correlation_id: str | None, _body: bytes) -> None:
    raise AssertionError("replies are taken only once a reply consumer is registered")
