"""Events and the event bus.

The job engine and the block-job drivers publish :class:`Event` objects here;
sessions subscribe. Publishing is synchronous and never waits: each
subscriber is a sink that puts the event into its own bounded queue and
decides for itself what overflow means (a session disconnects its client).
A sink that raises is dropped and logged, so one broken subscriber can never
stop the publisher.

Every event gets a sequence number, increasing by one per event, and a
timestamp that strictly increases: two events in the same microsecond get
distinct ones (the later one a microsecond on), and :meth:`EventBus.resume_after`
makes a restarted daemon continue after the last timestamp it journaled, so
a timestamp is a cursor into the event journal.

Must not import: sockets, JSON, jobs, block.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .clock import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its QMP name, its data members (in wire order), when, and its number."""

    name: str
    data: Mapping[str, Any]
    timestamp: tuple[int, int]
    seq: int


Sink = Callable[[Event], None]


class Subscription:
    """A handle to a sink registered with an :class:`EventBus`."""

    __slots__ = ("_bus", "_sink", "active")

    def __init__(self, bus: EventBus, sink: Sink) -> None:
        self._bus = bus
        self._sink = sink
        self.active = True

    def cancel(self) -> None:
        """Stop delivering events to this sink (idempotent)."""
        if self.active:
            self.active = False
            self._bus._remove(self)


class EventBus:
    """Synchronous fan-out of events to subscribers, in publish order."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._subs: list[Subscription] = []
        self._seq = 0
        #: the newest timestamp handed out, in microseconds
        self._last_us = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._seq

    @property
    def last_timestamp(self) -> tuple[int, int]:
        """The newest event's timestamp, or the floor set by :meth:`resume_after`."""
        return divmod(self._last_us, 1_000_000)

    def resume_after(self, timestamp: tuple[int, int]) -> None:
        """Stamp every later event after ``timestamp`` (a journal's newest)."""
        self._last_us = max(self._last_us, timestamp[0] * 1_000_000 + timestamp[1])

    def subscribe(self, sink: Sink) -> Subscription:
        sub = Subscription(self, sink)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def publish(self, name: str, data: Mapping[str, Any]) -> Event:
        """Stamp and number an event, then hand it to every sink, in order."""
        self._seq += 1
        seconds, micro = self._clock.wall()
        now = seconds * 1_000_000 + micro
        if now <= self._last_us:
            now = self._last_us + 1
        self._last_us = now
        event = Event(name, data, divmod(now, 1_000_000), self._seq)
        for sub in tuple(self._subs):
            if not sub.active:
                continue
            try:
                sub._sink(event)
            except Exception:
                log.exception("event sink failed; dropping it")
                sub.cancel()
        return event
