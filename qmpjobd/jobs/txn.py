"""Transactions and the completion algorithm (QEMU's job_completed and friends).

When a job's run ends, its transaction decides what follows: WAITING until
every member's run is over, then PENDING for all, then prepare, commit or
abort, clean, CONCLUDED and (with auto-dismiss) NULL, member by member; or,
when a member failed, an abort of every peer as cancelled. The functions
here are that algorithm, as QEMU 7.2 runs it; the manager calls them and
supplies the two things they need from it (:class:`TxnHost`).

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
from typing import TYPE_CHECKING, Protocol

from .driver import JobFailure
from .job import set_status
from .tables import JobStatus

if TYPE_CHECKING:
    from .job import Job
    from .listener import JobListener

log = logging.getLogger(__name__)


class Transaction:
    """A set of jobs that complete together.

    ``jobs`` lists the members newest first. A job started alone gets a
    transaction of its own. Only a *grouped* transaction is shared: the job
    manager gives each job created with a non-grouped transaction a fresh
    one-member transaction (QEMU's "individual" completion mode).
    """

    __slots__ = ("abort_in_progress", "aborting", "grouped", "jobs")

    def __init__(self, grouped: bool = True) -> None:
        self.grouped = grouped
        self.jobs: list[Job] = []
        self.aborting = False
        #: the abort loop runs; a nested call returns at once
        self.abort_in_progress = False

    def __repr__(self) -> str:
        ids = [j.id for j in self.jobs]
        return f"Transaction(grouped={self.grouped}, jobs={ids}, aborting={self.aborting})"


class TxnHost(Protocol):
    """What the completion algorithm needs from the engine."""

    @property
    def listeners(self) -> tuple[JobListener, ...]: ...

    def cancel_async(self, job: Job, force: bool) -> None: ...

    def graph_changed(self, sections: int = 1) -> None: ...

    #: A failed transaction lets every member's run end before it finalizes
    #: any (QEMU 8.x+: finalizing drains every node, which runs them).
    finish_runs_before_abort: bool


def failure_of(exc: JobFailure | OSError) -> tuple[int, str]:
    """A driver's failure as the job's return code and error text."""
    if isinstance(exc, JobFailure):
        return -exc.errno, exc.message
    code = exc.errno or _errno.EIO
    return -code, exc.strerror or os.strerror(code)


def update_rc(job: Job) -> None:
    """A cancelled job fails with ECANCELED; a failed job goes ABORTING."""
    if job.ret == 0 and job.is_cancelled:
        job.ret = -_errno.ECANCELED
    if job.ret != 0:
        if job.error is None:
            job.error = os.strerror(-job.ret)
        set_status(job, JobStatus.ABORTING)


def job_completed(host: TxnHost, job: Job) -> None:
    """The job's run has ended (or it was cancelled before it started)."""
    update_rc(job)
    if job.ret != 0:
        if job.txn.aborting:
            _abort_continue(host, job.txn)
        else:
            abort(host, job)
    else:
        _success(host, job)


def _success(host: TxnHost, job: Job) -> None:
    set_status(job, JobStatus.WAITING)
    txn = job.txn
    if not all(member.completed for member in txn.jobs):
        return
    for member in list(txn.jobs):
        set_status(member, JobStatus.PENDING)
        for listener in host.listeners:
            listener.job_pending(member)
    if all(member.auto_finalize for member in txn.jobs):
        finalize(host, job)


def _prepare(job: Job) -> int:
    if job.ret == 0:
        try:
            job.driver.prepare(job)
        except (JobFailure, OSError) as exc:
            job.ret, job.error = failure_of(exc)
        update_rc(job)
    return job.ret


def finalize(host: TxnHost, job: Job) -> None:
    """Finalize ``job``'s whole transaction (job-finalize, or auto-finalize)."""
    txn = job.txn
    for member in list(txn.jobs):
        if _prepare(member) != 0:
            # The member whose prepare failed is the one reported as
            # failed; every other member is aborted as cancelled.
            abort(host, member)
            return
    for member in list(txn.jobs):
        _finalize_single(host, member)


def _finalize_single(host: TxnHost, job: Job) -> None:
    update_rc(job)
    driver = job.driver
    try:
        if job.ret == 0:
            driver.commit(job)
        else:
            driver.abort(job)
        driver.clean(job)
    except Exception:
        log.exception("job %r: finalization hook failed", job.id)
    if job.started:
        host.graph_changed(driver.finalize_sections(job))
        for listener in host.listeners:
            listener.job_finalized(job)
    with contextlib.suppress(ValueError):
        job.txn.jobs.remove(job)
    set_status(job, JobStatus.CONCLUDED)
    if job.auto_dismiss or not job.started:
        dismiss(job, host)


def dismiss(job: Job, host: TxnHost) -> None:
    """CONCLUDED (or CREATED, never started) -> NULL; freeing a job that ran
    changes the block graph (its nodes let go)."""
    job.set_idle()
    with contextlib.suppress(ValueError):
        job.txn.jobs.remove(job)
    set_status(job, JobStatus.NULL)
    # QEMU lets go of the nodes a job took as its own when it frees it: they
    # stay busy until then, and those that close then do so after NULL.
    job.driver.release_nodes(job)
    if job.started:
        host.graph_changed(job.driver.free_sections)


def _completed_now(job: Job) -> bool:
    """``job.completed``, asked again after something may have changed it."""
    return job.completed


def abort(host: TxnHost, job: Job) -> None:
    """``job`` failed (or was force-cancelled after its run): abort its txn."""
    txn = job.txn
    if txn.aborting:
        return
    txn.aborting = True
    for other in list(txn.jobs):
        if other is not job:
            host.cancel_async(other, True)
    _abort_continue(host, txn)


def _abort_continue(host: TxnHost, txn: Transaction) -> None:
    """Finalize members from the head of the list while their runs are over.

    A member still running is woken and waited for: its own completion calls
    this again. A member that never started is completed here.
    """
    if txn.abort_in_progress:
        return
    txn.abort_in_progress = True
    try:
        if host.finish_runs_before_abort:
            for member in txn.jobs:
                if member.started and not member.completed:
                    member.wake()
                    return
        while txn.jobs:
            head = txn.jobs[0]
            if not head.completed:
                if not head.started:
                    # QEMU 7.2 would wait forever here (section 8 of the
                    # reference); a job that never ran is over at once.
                    head.cancelled = head.force_cancel = True
                    update_rc(head)
                    continue
                head.wake()
                if not _completed_now(head):
                    return
                # A job held after its run completes as soon as it is woken.
                continue
            _finalize_single(host, head)
    finally:
        txn.abort_in_progress = False
