"""The event journal: every event the bus publishes, kept for clients that
reconnect, with bounded retention (a count and an age).

The journal is a sink on the :class:`~qmpjobd.events.EventBus`. With a state
directory its events go to the :class:`~.store.Ledger` (written before any
monitor sees them); without one they stay in memory. A client reads it with
a cursor: the timestamp of the last event it saw. Timestamps strictly
increase, within a daemon's life and across restarts, so "after the cursor"
is exact. :meth:`Journal.read` says whether events after the cursor were
dropped by retention (``gap``): the client then falls back to the queries.

Must not import: sockets, wire, protocol, session, server, commands, block.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..events import Event
from .store import Ledger

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_AGE = 24 * 3600.0


def _us(timestamp: tuple[int, int]) -> int:
    return timestamp[0] * 1_000_000 + timestamp[1]


@dataclass(frozen=True, slots=True)
class JournalRead:
    """The events after a cursor, and whether some were dropped before them."""

    events: list[Event]
    #: True when retention dropped events after the cursor (or the cursor
    #: predates what this journal ever held): the list is not complete.
    gap: bool


class Journal:
    """Every event, in a :class:`Ledger` or in memory.

    :param now: wall-clock time, for the age limit.
    :param ledger: where to keep events; ``None`` keeps them in memory.
    :param start: in memory, the daemon's start: a cursor older than that
        reports a gap (the events before it died with the previous daemon).
    """

    def __init__(
        self,
        now: Callable[[], tuple[int, int]],
        *,
        ledger: Ledger | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_age: float = DEFAULT_MAX_AGE,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        self._now = now
        self._ledger = ledger
        self.max_events = max_events
        self.max_age = max_age
        self._memory: deque[Event] = deque()
        self._horizon = _us(start)

    def append(self, event: Event) -> None:
        """The bus sink."""
        if self._ledger is not None:
            self._ledger.append_event(event)
            return
        memory = self._memory
        memory.append(event)
        if len(memory) > self.max_events:
            self._horizon = _us(memory.popleft().timestamp)
        elif len(memory) & 255 == 0:
            self._drop_old()

    def _drop_old(self) -> None:
        cutoff = _us(self._now()) - int(self.max_age * 1e6)
        memory = self._memory
        while memory and _us(memory[0].timestamp) < cutoff:
            self._horizon = _us(memory.popleft().timestamp)

    async def read(self, since: tuple[int, int]) -> JournalRead:
        """The events after ``since``, oldest first."""
        cursor = _us(since)
        if self._ledger is not None:
            events, horizon = await self._ledger.events_after(since)
        else:
            self._drop_old()
            events = [e for e in self._memory if _us(e.timestamp) > cursor]
            horizon = self._horizon
        return JournalRead(events, cursor < horizon)
