"""The generic job engine: QEMU 7.2's job state machine, transactions and verbs.

It knows nothing of sockets, JSON, QMP command names or block nodes. The
command layer calls :class:`JobManager`; block-job drivers subclass
:class:`JobDriver` and use the driver-facing coroutines of :class:`Job`.

May import only: qmpjobd.errors, qmpjobd.events, qmpjobd.clock.
"""

from .driver import JobDriver, JobFailure
from .job import (
    ErrorAction,
    IoOperation,
    IoStatus,
    Job,
    JobStateError,
    Transaction,
    set_status,
)
from .manager import BlockJobInfo, JobInfo, JobManager
from .tables import (
    BLOCK_JOB_TYPES,
    COMPLETED_STATUSES,
    TRANSITIONS,
    VERB_TABLE,
    JobStatus,
    JobType,
    JobVerb,
    transition_allowed,
    verb_allowed,
)

__all__ = [
    "BLOCK_JOB_TYPES",
    "COMPLETED_STATUSES",
    "TRANSITIONS",
    "VERB_TABLE",
    "BlockJobInfo",
    "ErrorAction",
    "IoOperation",
    "IoStatus",
    "Job",
    "JobDriver",
    "JobFailure",
    "JobInfo",
    "JobManager",
    "JobStateError",
    "JobStatus",
    "JobType",
    "JobVerb",
    "Transaction",
    "set_status",
    "transition_allowed",
    "verb_allowed",
]
