"""The job state machine as data: statuses, verbs, job types and the two tables.

The tables are written as boolean matrices with a column header, so they read
like the state diagram and like the reference tables they transcribe. Nothing
here has behaviour; :mod:`qmpjobd.jobs.job` is the one place that consults
:data:`TRANSITIONS` when it changes a status, and
:mod:`qmpjobd.jobs.manager` consults :data:`VERB_TABLE` before every user verb.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class JobStatus(StrEnum):
    """QEMU's JobStatus, spelled as on the wire, in enum order."""

    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"


class JobVerb(StrEnum):
    """QEMU's JobVerb (``change`` only exists from 8.2 on: a release's verb
    table has a row for it or not)."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SET_SPEED = "set-speed"
    COMPLETE = "complete"
    DISMISS = "dismiss"
    FINALIZE = "finalize"
    CHANGE = "change"


class JobType(StrEnum):
    """QEMU's JobType, spelled as on the wire, in enum order."""

    COMMIT = "commit"
    STREAM = "stream"
    MIRROR = "mirror"
    BACKUP = "backup"
    CREATE = "create"
    AMEND = "amend"
    SNAPSHOT_LOAD = "snapshot-load"
    SNAPSHOT_SAVE = "snapshot-save"
    SNAPSHOT_DELETE = "snapshot-delete"


#: Statuses in which the job's run has ended ("completed" in QEMU's sense).
COMPLETED_STATUSES: frozenset[JobStatus] = frozenset(
    {
        JobStatus.WAITING,
        JobStatus.PENDING,
        JobStatus.ABORTING,
        JobStatus.CONCLUDED,
        JobStatus.NULL,
    }
)

_S = JobStatus
_COLUMNS: tuple[JobStatus, ...] = tuple(JobStatus)

# fmt: off
# State transition table: row = from, column = to; 1 = the move is allowed.
_STT: dict[JobStatus, tuple[int, ...]] = {
    #               U  C  R  P  Y  S  W  D  X  E  N
    _S.UNDEFINED: (0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    _S.CREATED:   (0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1),
    _S.RUNNING:   (0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0),
    _S.PAUSED:    (0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
    _S.READY:     (0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0),
    _S.STANDBY:   (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0),
    _S.WAITING:   (0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0),
    _S.PENDING:   (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0),
    _S.ABORTING:  (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0),
    _S.CONCLUDED: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
    _S.NULL:      (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
}

# Verb table: row = verb, column = the job's status; 1 = the verb is accepted.
_VERBS: dict[JobVerb, tuple[int, ...]] = {
    #                   U  C  R  P  Y  S  W  D  X  E  N
    JobVerb.CANCEL:    (0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0),
    JobVerb.PAUSE:     (0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
    JobVerb.RESUME:    (0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
    JobVerb.SET_SPEED: (0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
    JobVerb.COMPLETE:  (0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0),
    JobVerb.FINALIZE:  (0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0),
    JobVerb.DISMISS:   (0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0),
}
# The row QEMU 8.2 added for block-job-change.
_CHANGE_ROW: tuple[int, ...] = (
    #U  C  R  P  Y  S  W  D  X  E  N
    0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
)
# fmt: on


def _row(bits: tuple[int, ...]) -> frozenset[JobStatus]:
    assert len(bits) == len(_COLUMNS)
    return frozenset(s for s, bit in zip(_COLUMNS, bits, strict=True) if bit)


#: from-status -> the statuses it may move to.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {status: _row(bits) for status, bits in _STT.items()}
)

#: verb -> the statuses in which the verb is accepted.
VERB_TABLE: Mapping[JobVerb, frozenset[JobStatus]] = MappingProxyType(
    {verb: _row(bits) for verb, bits in _VERBS.items()}
)


@dataclass(frozen=True, slots=True)
class JobTables:
    """One QEMU release's state machine: its transitions and its verb table.

    The engine takes the tables it runs by; a version profile chooses them.
    """

    transitions: Mapping[JobStatus, frozenset[JobStatus]]
    verbs: Mapping[JobVerb, frozenset[JobStatus]]

    def verb_allowed(self, verb: JobVerb, status: JobStatus) -> bool:
        return status in self.verbs[verb]


#: QEMU 7.2's tables.
QEMU_7_2_TABLES: Final = JobTables(TRANSITIONS, VERB_TABLE)

#: QEMU 10.0's tables: 7.2's, and the verb ``change``.
QEMU_10_0_TABLES: Final = JobTables(
    TRANSITIONS, MappingProxyType({**VERB_TABLE, JobVerb.CHANGE: _row(_CHANGE_ROW)})
)


def transition_allowed(old: JobStatus, new: JobStatus) -> bool:
    """Whether the state machine has the edge ``old -> new``."""
    return new in TRANSITIONS[old]


def verb_allowed(verb: JobVerb, status: JobStatus) -> bool:
    """Whether ``verb`` is accepted by a job in ``status``."""
    return status in VERB_TABLE[verb]
