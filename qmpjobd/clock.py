"""The one injectable clock: wall time for event timestamps, monotonic time for
rate limiting and deadlines.

A leaf module. Code takes time from a :class:`Clock` it was given, never from
``time.time()`` directly, so tests can substitute a clock they control.
"""

from __future__ import annotations

import time
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
