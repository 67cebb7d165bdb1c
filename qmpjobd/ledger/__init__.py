"""Results that survive: the state directory's ledger and the event journal.

* :class:`Ledger` — a locked state directory with one SQLite database: the
  block nodes the monitor added, the job records, the journaled events.
* :class:`Recorder` — listens to the job engine and the block graph and
  keeps the ledger up to date.
* :class:`Journal` — every event, in the ledger or in memory, read back
  after a cursor (a timestamp).

Knows SQLite and plain records; nothing of sockets, QMP or the wire.
May import: jobs, events, clock, errors.
"""

from .journal import DEFAULT_MAX_AGE, DEFAULT_MAX_EVENTS, Journal, JournalRead
from .recorder import Recorder
from .store import Ledger, Snapshot

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_EVENTS",
    "Journal",
    "JournalRead",
    "Ledger",
    "Recorder",
    "Snapshot",
]
