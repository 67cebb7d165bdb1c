"""The generic job engine: QEMU 7.2's job state machine, transactions and verbs.

It knows nothing of sockets, JSON, QMP command names or block nodes. The
command layer calls :class:`JobManager`; block-job drivers subclass
:class:`JobDriver` and use the driver-facing coroutines of :class:`Job`.

May import only: qmpjobd.errors, qmpjobd.events, qmpjobd.clock.
"""

from .driver import JobDriver, JobFailure
from .gate import HoldSite, JobGate
from .job import (
    ErrorAction,
    IoOperation,
    IoStatus,
    Job,
    JobStateError,
    set_status,
)
from .listener import JobListener
from .manager import JobInfo, JobManager
from .restore import INTERRUPTED_ERROR, JobRecord, record_of, restore
from .tables import (
    COMPLETED_STATUSES,
    QEMU_7_2_TABLES,
    QEMU_10_0_TABLES,
    TRANSITIONS,
    VERB_TABLE,
    JobStatus,
    JobTables,
    JobType,
    JobVerb,
    transition_allowed,
    verb_allowed,
)
from .txn import Transaction

__all__ = [
    "COMPLETED_STATUSES",
    "INTERRUPTED_ERROR",
    "QEMU_7_2_TABLES",
    "QEMU_10_0_TABLES",
    "TRANSITIONS",
    "VERB_TABLE",
    "ErrorAction",
    "HoldSite",
    "IoOperation",
    "IoStatus",
    "Job",
    "JobDriver",
    "JobFailure",
    "JobGate",
    "JobInfo",
    "JobListener",
    "JobManager",
    "JobRecord",
    "JobStateError",
    "JobStatus",
    "JobTables",
    "JobType",
    "JobVerb",
    "Transaction",
    "record_of",
    "restore",
    "set_status",
    "transition_allowed",
    "verb_allowed",
]
