"""A socket under aiormq that hands a worker its deliveries directly, and writes without a hop.

aiormq (under aio-pika) reads every frame through a stream reader into a per-channel queue and
starts a task per delivery; its writer task sends what is queued for it. Each of those hand-offs
is an event-loop turn — on the 2-core benchmark machine 20-30 µs apiece, most of an RPC's time in
the worker. :class:`DeliveryTap` is the protocol under aiormq's stream: the frames of the
deliveries the worker registered (``core/inbound.py`` picks them out) are parsed and handed to
its callback as they arrive; every other frame goes to aiormq unchanged, so the handshake,
channels, confirms, heartbeats and closes stay aiormq's. :meth:`DeliveryTap.write` sends frames at
once when aiormq has nothing queued to send before them — once :meth:`DeliveryTap.check_writer_order`
has seen, on this connection, that aiormq's writer still writes a frame in the step that takes it
off its queue; otherwise every write goes through aiormq's queue.

The tap is installed through aiormq's ``transport_factory`` argument (:class:`TapFactory`),
plain TCP and TLS alike. asyncio's own ``open_connection`` says to do exactly this for a
different protocol class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import version as _version
from typing import Any, cast

import aiormq.exceptions
import pamqp.frame
from aiormq import spec
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.connection import TransportFactory

from amqptasks.aio import wire
from amqptasks.core.frames import FRAME_BODY, encode_frame
from amqptasks.core.inbound import HEARTBEAT, Delivery, FrameRouter, Passed

log = logging.getLogger("amqptasks.worker")

#: Seconds without a frame passed to aiormq before it gets a heartbeat of ours: aiormq takes a
#: connection that shows it nothing for three heartbeat intervals for dead, and a busy consumer
#: receives nothing but deliveries (the broker sends heartbeats only on an idle connection).
KEEPALIVE = 1.0

#: Bytes read from the socket at a time (a frame larger than this arrives over several reads).
READ_SIZE = 64 * 1024

DeliveryCallback = Callable[[DeliveredMessage], None]


class DeliveryTap(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """The protocol of one connection: routes its deliveries, passes the rest to aiormq's reader.

    A buffered protocol: the socket is read into one buffer kept for the connection's life. For
    a plain protocol asyncio reads into a new 256 KiB bytes object each time, which glibc maps and
    unmaps (mmap, mremap, munmap: ~16 µs per read here, against ~3 µs for ``recv_into``).
    """

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._loop = loop
        self._router = FrameRouter()
        self._callbacks: dict[tuple[int, str], tuple[Any, DeliveryCallback]] = {}
        self._socket: asyncio.Transport | None = None
        self._write_queue: asyncio.Queue[Any] | None = None
        self._passed_at = loop.time()
        self._inbox = memoryview(bytearray(READ_SIZE))
        self._on_write: Callable[[bytes], None] | None = None  # set while the writer order is checked
        #: Writes may skip aiormq's queue: set by :meth:`check_writer_order` once it has seen that safe.
        self.direct_writes = False
        self.deliveries = 0  # taken and dispatched here (the tests check the tap is in use)

    # --- set-up ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport
        super().connection_made(transport)

    def bind(self, connection: Any) -> None:
        """The aiormq connection on this socket (its write queue orders :meth:`write`)."""
        self._write_queue = connection.write_queue

    def take(self, channel: Any, consumer_tag: str, callback: DeliveryCallback) -> None:
        """Deliveries to ``consumer_tag`` on ``channel`` (an aiormq channel) go to ``callback``,
        called on the loop as they arrive. Register before ``basic.consume``: the first delivery
        can arrive in the same read as the ``consume-ok``."""
        self._callbacks[(channel.number, consumer_tag)] = (channel, callback)
        self._router.take(channel.number, consumer_tag)

    # --- reading -----------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbox

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._inbox[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        dispatched = False
        for item in self._router.feed(data):
            if isinstance(item, Passed):
                super().data_received(item.data)
                self._passed_at = self._loop.time()
            else:
                self._dispatch(item)
                dispatched = True
        if dispatched and not self._router.passthrough and self._loop.time() - self._passed_at > KEEPALIVE:
            super().data_received(HEARTBEAT)
            self._passed_at = self._loop.time()

    def _dispatch(self, item: Delivery) -> None:
        channel, callback = self._callbacks[(item.channel, item.consumer_tag)]
        if channel.is_closed:
            # As aiormq does: a closed channel's deliveries return to the queue with it.
            self._router.release_channel(item.channel)
            return
        try:
            method = cast(spec.Basic.Deliver, pamqp.frame.unmarshal(item.method)[2])  # core/inbound checked
            header = wire.content_header(item.header)  # lenient, on this connection only
        except Exception:  # whatever aiormq would make of it (close the connection, say), it does
            body = encode_frame(FRAME_BODY, item.channel, item.body) if item.body else b""
            super().data_received(item.method + item.header + body)
            return
        self.deliveries += 1
        try:
            callback(DeliveredMessage(delivery=method, header=header, body=item.body, channel=channel))
        except Exception:  # the callback settles its own failures; one escaping is a bug of ours
            log.exception("internal error dispatching a delivery on channel %d", item.channel)

    # --- writing -----------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The socket is closed or closing (aiormq may not know yet)."""
        return self._socket is None or self._socket.is_closing()

    def write(self, data: bytes) -> bool:
        """Send ``data`` (whole frames) now, after whatever aiormq has queued; False if that would
        have to wait (aiormq's bounded write queue is full, or the socket is closing)."""
        queue, socket = self._write_queue, self._socket
        if queue is None or socket is None or socket.is_closing():
            return False
        # aiormq's writer task writes each frame in the step that takes it off the queue (no await
        # between get() and write()), so an empty queue means everything queued before is in the
        # transport already. check_writer_order() saw that on this connection, or this is False.
        if self.direct_writes and queue.empty():
            socket.write(data)
            return True
        if queue.full():
            return False
        queue.put_nowait(ChannelFrame(payload=data, should_close=False))
        return True

    def written_by_aiormq(self, data: bytes) -> None:
        """aiormq's writer wrote ``data`` (through :class:`_Writer`)."""
        if self._on_write is not None:
            self._on_write(data)

    async def check_writer_order(self, connection: Any, timeout: float = 2.0) -> bool:
        """Check on ``connection`` (this socket's aiormq connection) the invariant :meth:`write`
        relies on, and enable direct writes only if it holds.

        A heartbeat frame is queued for aiormq's writer, and every loop turn until it is written
        looks at the queue: empty with the heartbeat not yet written means the writer takes a
        frame and writes it in different steps (it awaits in between), so a direct write could
        overtake it. Then, or if the heartbeat is not written within ``timeout``, writes keep
        going through aiormq's queue, and a warning says so.
        """
        probe = bytes(HEARTBEAT)  # a new object: told apart from any other write by identity
        loop = self._loop
        verdict: asyncio.Future[bool] = loop.create_future()
        queue: Any = None  # aiormq's write queue, read inside the try below

        def on_write(data: bytes) -> None:
            if data is probe and not verdict.done():
                verdict.set_result(True)

        def watch() -> None:
            if verdict.done():
                return
            if queue.empty():  # taken off the queue, not written
                verdict.set_result(False)
                return
            loop.call_soon(watch)

        self._on_write = on_write
        try:
            self.bind(connection)
            queue = connection.write_queue
            async with asyncio.timeout(timeout):
                await queue.put(ChannelFrame(payload=probe, should_close=False))
                loop.call_soon(watch)
                holds = await verdict
        except TimeoutError:
            holds = False
        except Exception as exc:  # aiormq changed under us (docs/internals.md): fall back, never fail the connect
            log.warning(
                "cannot check aiormq's writer (aiormq %s: %s: %s): this connection's acks and replies go "
                "through aiormq's queue (slower, same result)", _version("aiormq"), type(exc).__name__, exc,
            )
            self.direct_writes = False
            return False
        finally:
            self._on_write = None
        if not holds:
            log.warning(
                "aiormq's writer does not write a frame in the step that takes it off its queue (aiormq %s): "
                "this connection's acks and replies go through aiormq's queue (slower, same result)",
                _version("aiormq"),
            )
        self.direct_writes = holds
        return holds


class _Writer(asyncio.StreamWriter):
    """The stream writer aiormq writes through: tells the tap what it wrote, while it checks."""

    def __init__(self, transport: asyncio.Transport, tap: DeliveryTap, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, tap, reader, loop)
        self._tap = tap

    def write(self, data: Any) -> None:
        super().write(data)
        self._tap.written_by_aiormq(data)


class TapFactory(TransportFactory):
    """aiormq's ``transport_factory``: the connection's socket with a :class:`DeliveryTap` on it."""

    def __init__(self) -> None:
        self.tap: DeliveryTap | None = None

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider is not None else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        tap = DeliveryTap(reader, loop)
        try:
            transport, _ = await loop.create_connection(lambda: tap, url.host, url.port, ssl=ssl, **kwargs)
        except OSError as exc:  # as aiormq's own factories report it
            raise aiormq.exceptions.AMQPConnectionError(*exc.args) from exc
        self.tap = tap
        return reader, _Writer(transport, tap, reader, loop)
