"""The one injectable clock: wall time for event timestamps, monotonic time for
rate limiting and deadlines.

A leaf module. Code takes time from a :class:`Clock` it was given, never from
``time.time()`` directly, so tests can substitute a clock they control.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> tuple[int, int]:
        """Wall-clock time as ``(seconds, microseconds)``."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for durations only."""
        ...


class SystemClock:
    """The real clock."""

    def wall(self) -> tuple[int, int]:
        ns = time.time_ns()
        return ns // 1_000_000_000, (ns // 1_000) % 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to (for tests)."""

    def __init__(self, wall_seconds: float = 1_700_000_000.0, monotonic: float = 0.0) -> None:
        self._wall = wall_seconds
        self._mono = monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def wall(self) -> tuple[int, int]:
        us = round(self._wall * 1_000_000)
        return us // 1_000_000, us % 1_000_000

    def monotonic(self) -> float:
        return self._mono


#: Where a virtual clock starts unless told otherwise (2023-11-14 22:13:20 UTC).
DEFAULT_EPOCH = 1_700_000_000
#: How fast a copy job without a speed limit goes under a virtual clock.
VIRTUAL_THROUGHPUT = 64 << 20


class VirtualTimer:
    """A callback due at a virtual instant (``cancel()`` like asyncio's handles)."""

    __slots__ = ("callback", "cancelled", "deadline", "seq")

    def __init__(self, deadline: int, seq: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: VirtualTimer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class VirtualClock:
    """Time that moves only when :meth:`set_now` moves it (``--clock virtual``).

    Wall time is ``epoch`` plus the virtual time elapsed. Timestamps handed
    out by :meth:`wall` strictly increase: two at the same virtual instant
    are 1 µs apart, without moving the clock. Timers (:meth:`call_later`,
    :meth:`sleep`) fire only when the owner of the clock fires them
    (:meth:`fire_due`), in deadline order.
    """

    def __init__(self, epoch: float = DEFAULT_EPOCH, throughput: int = VIRTUAL_THROUGHPUT) -> None:
        self._epoch_us = round(epoch * 1_000_000)
        self._now_ns = 0
        self._last_us = -1
        self._timers: list[VirtualTimer] = []
        self._seq = 0
        #: bytes per second of a copy job that has no speed limit
        self.throughput = throughput
        #: tasks inside :meth:`sleep` right now
        self.sleepers = 0

    @property
    def now_ns(self) -> int:
        """Virtual nanoseconds since the clock started."""
        return self._now_ns

    def peek(self) -> tuple[int, int]:
        """The next timestamp :meth:`wall` would hand out, without taking it."""
        us = max(self._epoch_us + self._now_ns // 1000, self._last_us + 1)
        return us // 1_000_000, us % 1_000_000

    def wall(self) -> tuple[int, int]:
        us = max(self._epoch_us + self._now_ns // 1000, self._last_us + 1)
        self._last_us = us
        return us // 1_000_000, us % 1_000_000

    def monotonic(self) -> float:
        return self._now_ns / 1e9

    def call_later(self, delay: float, callback: Callable[[], None]) -> VirtualTimer:
        self._seq += 1
        deadline = self._now_ns + max(0, round(delay * 1e9))
        timer = VirtualTimer(deadline, self._seq, callback)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, done)
        self.sleepers += 1
        try:
            await future
        finally:
            self.sleepers -= 1
            timer.cancel()

    def next_deadline(self) -> int | None:
        """When the next live timer is due (virtual ns), or None."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].deadline if self._timers else None

    def set_now(self, now_ns: int) -> None:
        """Move the clock forward to ``now_ns`` (never back)."""
        self._now_ns = max(self._now_ns, now_ns)

    def fire_due(self) -> int:
        """Run every live timer due by now, in deadline order; how many ran."""
        fired = 0
        while self._timers and self._timers[0].deadline <= self._now_ns:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            timer.cancelled = True
            timer.callback()
            fired += 1
        return fired
