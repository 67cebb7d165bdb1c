"""Rate limiting by bytes per time slice, as QEMU's block jobs do it.

A slice lasts 100 ms and carries a quota of ``speed / 10`` bytes. Work is
counted after it is done; once a slice's count reaches its quota, the job
must wait until the slice (stretched to cover the excess) is over, and the
next slice starts afresh. A new speed applies from the next chunk on.

Must not import: sockets, JSON.
"""

from __future__ import annotations

from ..clock import Clock, VirtualClock

SLICE_SECONDS = 0.1


class RateLimiter:
    """A slice-based budget of bytes per second (0 = unlimited).

    :param clock: where the time comes from (monotonic seconds).
    """

    def __init__(self, clock: Clock, speed: int = 0) -> None:
        self._clock = clock
        self._speed = speed
        #: Under a virtual clock an unlimited job still takes virtual time.
        self._default = clock.throughput if isinstance(clock, VirtualClock) else 0
        self._slice_start = 0.0
        self._slice_end = -1.0
        self._dispatched = 0

    @property
    def speed(self) -> int:
        """The limit in force (a virtual clock's throughput when none is set)."""
        return self._speed or self._default

    def set_speed(self, speed: int) -> None:
        self._speed = speed

    def _quota(self) -> float:
        return self.speed * SLICE_SECONDS

    def _roll(self, now: float) -> None:
        if self._slice_end < now:
            self._slice_start = now
            self._slice_end = now + SLICE_SECONDS
            self._dispatched = 0

    def account(self, nbytes: int) -> None:
        """Count ``nbytes`` of work just done."""
        if not self.speed:
            return
        self._roll(self._clock.monotonic())
        self._dispatched += nbytes

    def delay(self) -> float:
        """Seconds to wait before the next chunk (0 when within the quota)."""
        if not self.speed:
            return 0.0
        now = self._clock.monotonic()
        self._roll(now)
        quota = self._quota()
        if self._dispatched < quota:
            return 0.0
        # Over quota: the slice is stretched to cover what was dispatched.
        self._slice_end = self._slice_start + (self._dispatched / quota) * SLICE_SECONDS
        return max(0.0, self._slice_end - now)
