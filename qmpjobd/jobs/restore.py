"""Jobs rebuilt from a record after a restart.

A job's record is plain data (:class:`JobRecord`). A restarted daemon has
no task for a job that ran before: a job recorded as concluded comes back
concluded, exactly as it was; a job recorded in any other status ended when
the daemon stopped, so it comes back the way QEMU ends a failed job
(``aborting``, the listeners' finalization, ``concluded``), with
:data:`INTERRUPTED_ERROR`, so that the client learns the result. Either way
the job stays until it is dismissed, whatever its auto-dismiss.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

import errno as _errno
from typing import NamedTuple

from .driver import JobDriver
from .job import IoStatus, Job, set_status
from .manager import JobManager
from .tables import JobStatus, JobType
from .txn import Transaction

#: The error of a job that was running when the daemon stopped.
INTERRUPTED_ERROR = "qmpjobd stopped while the job was running"


class JobRecord(NamedTuple):
    """What is kept of a job: its query fields, its options and its nodes.

    A named tuple: built on every status change, it must be cheap.
    """

    id: str
    type: str
    status: str
    current_progress: int = 0
    total_progress: int = 0
    speed: int = 0
    error: str | None = None
    ret: int = 0
    auto_finalize: bool = True
    auto_dismiss: bool = True
    io_status: str = "ok"
    paused: bool = False
    nodes: tuple[str, ...] = ()


def record_of(job: Job, nodes: tuple[str, ...] = ()) -> JobRecord:
    """The record of a live job."""
    return JobRecord(
        job.id,
        job.type._value_,
        job.status._value_,
        job.current_progress,
        job.total_progress,
        job.speed,
        job.error,
        job.ret,
        job.auto_finalize,
        job.auto_dismiss,
        job.io_status,
        job.pause_count > 0,
        nodes,
    )


class _RestoredDriver(JobDriver):
    """The driver of a job whose run is over: it has nothing left to do."""

    def __init__(self, job_type: JobType) -> None:
        self.job_type = job_type

    async def run(self, job: Job) -> None:
        raise AssertionError("a restored job does not run")


def restore(manager: JobManager, record: JobRecord) -> Job:
    """Register the job of ``record``, concluded (publishing its ending if it
    had not concluded).

    :raise ValueError: the record names an unknown type or status.
    """
    status = JobStatus(record.status)
    if status in (JobStatus.UNDEFINED, JobStatus.NULL):
        raise ValueError(f"job {record.id!r}: nothing to restore in status {status}")
    job = Job(
        record.id,
        _RestoredDriver(JobType(record.type)),
        manager,
        Transaction(grouped=False),
        auto_finalize=record.auto_finalize,
        auto_dismiss=record.auto_dismiss,
    )
    job.current_progress = record.current_progress
    job.total_progress = record.total_progress
    job.speed = record.speed
    io_status: IoStatus = "ok"
    if record.io_status in ("failed", "nospace"):
        io_status = "nospace" if record.io_status == "nospace" else "failed"
    job.io_status = io_status
    job.pause_count = 1 if record.paused else 0
    job._started = True
    job.end_run()
    manager._adopt(job)
    if status is JobStatus.CONCLUDED:
        job.status = JobStatus.CONCLUDED
        job.error = record.error
        job.ret = record.ret
        return job
    # The job's run ended with the daemon: a failure, as QEMU reports one.
    job.status = JobStatus.RUNNING
    job.pause_count = 0
    job.ret = -_errno.EIO
    job.error = INTERRUPTED_ERROR
    set_status(job, JobStatus.ABORTING)
    for listener in manager.listeners:
        listener.job_finalized(job)
    set_status(job, JobStatus.CONCLUDED)
    return job
