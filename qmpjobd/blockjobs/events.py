"""Block jobs as QMP clients see them: the ``BLOCK_JOB_*`` events, the
``query-block-jobs`` rows, and how ``block-job-*`` commands find their job.

QEMU's ``blockjob.c`` listens to the generic job through notifiers and sends
the block-job events from there; :class:`BlockJobEvents` is that listener,
registered with the engine by the composition root.

Must not import: sockets, JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ErrorClass, QMPError
from ..events import EventBus
from ..jobs import ErrorAction, IoOperation, IoStatus, Job, JobListener, JobManager, JobType

#: Job types that are *block jobs*: listed by query-block-jobs, reachable
#: through block-job-* commands, and the only ones with these events.
BLOCK_JOB_TYPES: frozenset[JobType] = frozenset(
    {JobType.COMMIT, JobType.STREAM, JobType.MIRROR, JobType.BACKUP}
)


def is_block_job(job: Job) -> bool:
    return job.type in BLOCK_JOB_TYPES


def event_data(job: Job) -> dict[str, Any]:
    """``device, len, offset, speed, type`` in QEMU 7.2's wire order."""
    return {
        "device": job.id,
        "len": job.total_progress,
        "offset": job.current_progress,
        "speed": job.speed,
        "type": job.type._value_,
    }


class BlockJobEvents(JobListener):
    """Publishes ``BLOCK_JOB_READY``, ``_PENDING``, ``_COMPLETED``,
    ``_CANCELLED`` and ``_ERROR`` for block jobs, where QEMU sends them."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def job_ready(self, job: Job) -> None:
        if job.type in BLOCK_JOB_TYPES:
            self._bus.publish("BLOCK_JOB_READY", event_data(job))

    def job_pending(self, job: Job) -> None:
        if not job.auto_finalize and job.type in BLOCK_JOB_TYPES:
            self._bus.publish("BLOCK_JOB_PENDING", {"type": job.type._value_, "id": job.id})

    def job_finalized(self, job: Job) -> None:
        if job.type not in BLOCK_JOB_TYPES:
            return
        data = event_data(job)
        if job.is_cancelled:
            self._bus.publish("BLOCK_JOB_CANCELLED", data)
            return
        if job.ret != 0 and job.error is not None:
            data["error"] = job.error
        self._bus.publish("BLOCK_JOB_COMPLETED", data)

    def job_io_error(self, job: Job, operation: IoOperation, action: ErrorAction) -> None:
        if job.type in BLOCK_JOB_TYPES:
            data = {"device": job.id, "operation": operation, "action": action}
            self._bus.publish("BLOCK_JOB_ERROR", data)


@dataclass(frozen=True, slots=True)
class BlockJobInfo:
    """One ``query-block-jobs`` entry; fields in QEMU 7.2's wire order."""

    auto_finalize: bool
    io_status: IoStatus
    device: str
    auto_dismiss: bool
    busy: bool
    len: int
    offset: int
    status: str
    paused: bool
    speed: int
    ready: bool
    type: str
    #: mirror entries only, from QEMU 8.2 on
    actively_synced: bool | None = None
    error: str | None = None


def query_block_jobs(jobs: JobManager, *, actively_synced: bool = False) -> list[BlockJobInfo]:
    """``query-block-jobs``: every block job, newest first; mirror entries
    with ``actively-synced`` when asked (QEMU 8.2's BlockJobInfo union)."""
    return [
        BlockJobInfo(
            auto_finalize=job.auto_finalize,
            io_status=job.io_status,
            device=job.id,
            auto_dismiss=job.auto_dismiss,
            busy=job.busy,
            len=job.total_progress,
            offset=job.current_progress,
            status=job.status._value_,
            paused=job.paused,
            speed=job.speed,
            ready=job.ready,
            type=job.type._value_,
            actively_synced=(
                bool(getattr(job.driver, "actively_synced", False))
                if actively_synced and job.type is JobType.MIRROR
                else None
            ),
            error=job.error if job.ret != 0 else None,
        )
        for job in jobs.jobs_newest_first()
        if job.type in BLOCK_JOB_TYPES
    ]


def find_block_job(jobs: JobManager, device: str) -> Job:
    """:raise QMPError: DeviceNotActive "Block job '%s' not found"."""
    job = jobs.get(device)
    if job is None or job.type not in BLOCK_JOB_TYPES:
        raise QMPError(f"Block job '{device}' not found", ErrorClass.DEVICE_NOT_ACTIVE)
    return job


def block_job_cancel(jobs: JobManager, job: Job, device_text: str, force: bool = False) -> None:
    """``block-job-cancel``: refuses a soft cancel of a user-paused job first.

    :raise QMPError: "The block job for device '%s' is currently paused",
        or the verb error.
    """
    if job.user_paused and not force:
        raise QMPError(f"The block job for device '{device_text}' is currently paused")
    jobs.cancel(job, force)
