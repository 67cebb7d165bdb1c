"""What the engine tells the layers above it about a job's life.

QEMU keeps ``job.c`` generic and lets ``blockjob.c`` listen through
notifiers (``on_ready``, ``on_pending``, ``on_finalize_*``, I/O errors).
A :class:`JobListener` is that hook: the engine calls each registered
listener, synchronously, at the exact point where QEMU notifies, so what a
listener publishes is ordered with the status changes around it. The block
job layer listens to send its own events; a record keeper or an event
journal can listen the same way.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import ErrorAction, IoOperation, Job
    from .tables import JobStatus


class JobListener:
    """Base class: every hook does nothing."""

    def job_ready(self, job: Job) -> None:
        """The job just moved RUNNING -> READY."""

    def job_pending(self, job: Job) -> None:
        """The job just moved to PENDING (its transaction's runs are over)."""

    def job_finalized(self, job: Job) -> None:
        """The job's commit or abort and clean hooks ran; CONCLUDED follows.

        Called only for jobs that were started. ``job.ret``, ``job.error``
        and ``job.is_cancelled`` say how it ended.
        """

    def job_io_error(self, job: Job, operation: IoOperation, action: ErrorAction) -> None:
        """An I/O request failed and the error policy chose ``action``."""

    def job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        """The job's status was just set (after its ``JOB_STATUS_CHANGE``).

        Only listeners that override this hook are called for it (the hot path).
        """
