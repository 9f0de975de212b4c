"""Which delivery tags to acknowledge, and how: coalesced acks for one consuming channel.

Acking each delivery on its own costs a frame, a socket write and a loop wake-up per task; one
``basic.ack(tag, multiple=True)`` settles every delivery up to ``tag``. That is only safe for the
*contiguous* prefix of finished deliveries: a delivery still running below ``tag`` would be acked
before it finished. Finished deliveries above a gap (an earlier task still running) are held a
little and then acked one by one, so one slow task never keeps the others unacked — they would
fill the prefetch window and stall the consumer.

Pure bookkeeping, no I/O: the worker's consumer sends what :meth:`AckWindow.take` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AckBatch:
    """What to send now: ``basic.ack(upto, multiple=True)`` if ``upto``, then ``basic.ack(tag)`` for each single."""

    upto: int | None
    singles: tuple[int, ...]

    def __bool__(self) -> bool:
        return self.upto is not None or bool(self.singles)


@dataclass
class AckWindow:
    """Delivery tags of one channel (they start at 1 and grow by one per delivery).

    ``hold`` is how many finished deliveries above a gap may wait for the gap to close before
    they are acked individually anyway.
    """

    hold: int = 16
    _next: int = 1  # the lowest tag not yet settled
    _settled: set[int] = field(default_factory=set)  # finished, above _next
    _unsent: set[int] = field(default_factory=set)  # of those, not acked individually yet

    def settle(self, tag: int, *, acked: bool = False) -> None:
        """``tag`` is finished. ``acked=True``: already settled on the wire (rejected, say)."""
        if tag < self._next:
            raise ValueError(f"delivery tag {tag} settled twice (window starts at {self._next})")
        self._settled.add(tag)
        if not acked:
            self._unsent.add(tag)

    @property
    def waiting(self) -> int:
        """Finished deliveries whose ack has not been handed out yet."""
        return len(self._unsent)

    def take(self, *, force: bool = False) -> AckBatch:
        """The acks to send now. ``force``: ack everything finished, gap or not (a timer, a stop)."""
        upto = None
        while self._next in self._settled:
            if self._next in self._unsent:
                upto = self._next
                self._unsent.discard(self._next)
            self._settled.discard(self._next)
            self._next += 1
        # ``upto`` is the highest tag of the prefix not yet settled on the wire: the broker
        # refuses an ack for a tag it no longer holds, while a multiple ack passing over
        # already-settled tags below it is fine.
        if self._unsent and (force or len(self._unsent) >= self.hold):
            singles = tuple(sorted(self._unsent))
            self._unsent.clear()
        else:
            singles = ()
        return AckBatch(upto, singles)
