"""Control for people who test management layers: the ``x-qmpjobd-*``
extension commands' domain.

* :class:`Holds` (``x-qmpjobd-hold``, ``-release``, ``-step``,
  ``-query-holds``): hold a job where QEMU's job yields;
* :class:`Faults` (``x-qmpjobd-fault``, ``-clear-faults``,
  ``-query-faults``): fail a node's next read, write or flush;
* :class:`History` (``x-qmpjobd-query-history``): a job's status changes,
  their causes and the events sent;
* :class:`GuestWriter` (``x-qmpjobd-guest-write``): write to a node as a
  guest would, with mirrors tracking it;
* :class:`ClockControl` (``x-qmpjobd-advance-clock``, ``-query-clock``):
  the virtual clock, and settling after every command under it.

Unused, none of them changes what a QMP client sees.

Must not import: sockets, JSON, wire, protocol, schema, session, server.
"""

from __future__ import annotations

from ..block import BlockGraph
from ..clock import Clock, SystemClock
from ..events import EventBus
from ..jobs import JobManager
from .faults import Faults
from .guest import GuestWriter
from .history import History
from .holds import HOLDABLE, REFUSED, Hold, Holds
from .vclock import ClockControl


class Control:
    """Every extension's state, wired into the engine (the hold gate)."""

    def __init__(
        self, jobs: JobManager, graph: BlockGraph, bus: EventBus, clock: Clock | None = None
    ) -> None:
        self.jobs = jobs
        self.clock = ClockControl(jobs, clock if clock is not None else SystemClock())
        self.holds = Holds(jobs)
        self.faults = Faults(graph)
        self.history = History(bus)
        self.guest = GuestWriter(jobs, graph)
        jobs.gate = self.holds


__all__ = [
    "HOLDABLE",
    "REFUSED",
    "ClockControl",
    "Control",
    "Faults",
    "GuestWriter",
    "History",
    "Hold",
    "Holds",
]
