"""The interface a job type implements, and how a job's run reports failure.

A :class:`JobDriver` does the work of one job (a backup, a mirror, an image
creation) and supplies the hooks the engine calls at fixed points of the
lifecycle. The engine owns the state machine; a driver never sets a status,
it only returns from :meth:`JobDriver.run`, raises :class:`JobFailure` (or an
:class:`OSError`), calls the driver-facing coroutines of
:class:`~qmpjobd.jobs.job.Job`, and answers the hooks.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import QMPError, QmpJobdError
from .tables import JobType

if TYPE_CHECKING:
    from .job import Job


class JobFailure(QmpJobdError):
    """Raised by a driver's ``run`` or ``prepare`` to fail the job.

    :param message: the text shown as the job's ``error`` (QEMU's wording).
    :param errno: the errno the failure stands for (kept as the job's return
        code; it does not show on the wire when a message is given).
    """

    def __init__(self, message: str, errno: int = _errno.EIO) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno


class JobDriver:
    """Base class of a job type.

    Contract for :meth:`run`: return normally for success; raise
    :class:`JobFailure` or :class:`OSError` (its ``strerror``, e.g.
    ``"Input/output error"``, becomes the job's error) for failure. Call
    ``await job.pause_point()`` (or ``await job.sleep(...)``) regularly, and
    return as soon as ``job.is_cancelled`` is true. A driver that can be
    soft-cancelled in READY (mirror) also returns when ``job.cancel_requested``
    becomes true there, and one with a complete hook returns when
    ``job.should_complete`` becomes true.

    The synchronous hooks run on the event loop and must not block.
    """

    #: The job's type.
    job_type: JobType

    #: The complete hook, or ``None`` for job types that cannot be completed
    #: (the verb then fails with "The active block job '%s' cannot be
    #: completed"). It may raise :class:`~qmpjobd.errors.QMPError` to refuse;
    #: when it returns, the engine sets ``job.should_complete`` and wakes the
    #: job unless it is parked (a parked job completes after resume).
    complete: Callable[[Job], None] | None = None

    async def run(self, job: Job) -> None:
        """Do the job's work (see the class contract)."""
        raise NotImplementedError

    def prepare(self, job: Job) -> None:
        """First finalization step, for every member before any commit.

        :raise JobFailure: to abort the whole transaction.
        """

    def commit(self, job: Job) -> None:
        """Finalize a job that succeeded."""

    def abort(self, job: Job) -> None:
        """Finalize a job that failed or was cancelled."""

    def clean(self, job: Job) -> None:
        """Last step of finalization, after commit or abort."""

    def cancel_hook(self, job: Job, force: bool) -> bool:
        """Return the effective ``force`` of a cancel request.

        The default stands for "no hook": every cancel is a force cancel.
        Mirror returns ``force or not job.ready``; backup returns True.
        """
        return True

    def user_resume(self, job: Job) -> None:
        """Called when the user pause is dropped (resume, or cancel).

        Block jobs reset their io-status here.
        """

    def set_speed(self, job: Job, speed: int) -> None:
        """Called after ``job.speed`` changed (creation or set-speed)."""

    #: Block graph sections QEMU opens when it frees the job (after NULL).
    free_sections = 0

    def release_nodes(self, job: Job) -> None:
        """Let go of what the job took as its own for its whole life (the
        nodes a block job holds): when the job is freed, right after NULL."""

    def finalize_sections(self, job: Job) -> int:
        """Block graph sections QEMU opens finalizing the job (its abort or
        commit and clean), before the completion event."""
        return 0

    def change(self, job: Job, copy_mode: str) -> None:
        """``block-job-change`` (QEMU 8.2): only mirror implements it.

        :raise QMPError: "Job type does not support change", or the driver's refusal.
        """
        raise QMPError("Job type does not support change")

    async def pause(self, job: Job) -> None:
        """Called at a pause point right before the job parks (e.g. to wait
        for in-flight requests)."""

    def resume(self, job: Job) -> None:
        """Called in the job's task after it leaves a pause point."""
