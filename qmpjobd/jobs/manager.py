"""The job registry, the user verbs, and the transaction completion algorithm.

:class:`JobManager` creates and starts jobs, runs each job's driver in an
asyncio task, and, when a run ends, drives the job (and its transaction)
through WAITING/PENDING or ABORTING to CONCLUDED and NULL exactly as QEMU 7.2
does. Every user verb checks in QEMU's order and fails with QEMU's text as a
:class:`~qmpjobd.errors.QMPError`.

Everything runs on the event loop thread; nothing here blocks or locks.

Must not import: sockets, JSON, wire, block.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..clock import Clock, VirtualClock
from ..errors import QMPError
from ..events import EventBus
from . import txn as _txn
from .driver import JobDriver, JobFailure
from .gate import JobGate
from .job import Cancellable, Job, JobStateError, set_status
from .listener import JobListener
from .tables import QEMU_7_2_TABLES, JobStatus, JobTables, JobVerb
from .txn import Transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One ``query-jobs`` entry; fields in QEMU 7.2's wire order."""

    current_progress: int
    status: str
    total_progress: int
    type: str
    id: str
    error: str | None = None


_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def _id_wellformed(job_id: str) -> bool:
    """QEMU's id_wellformed(): an ASCII letter, then letters, digits, '-', '.', '_'."""
    return _ID_RE.fullmatch(job_id) is not None


def _verb_error(job: Job, verb: JobVerb) -> QMPError:
    return QMPError(
        f"Job '{job.id}' in state '{job.status.value}' cannot accept command verb '{verb.value}'"
    )


def _has_concluded(job: Job) -> Callable[[], bool]:
    return lambda: job.status in (JobStatus.CONCLUDED, JobStatus.NULL)


@dataclass(slots=True, eq=False)
class _DrainSection:
    """One open drained section. Compared by identity: two sections over the
    same jobs are still two sections, each with its own pauses to drop."""

    which: Callable[[Job], bool] | None
    jobs: list[Job]


class _Drained(contextlib.AbstractAsyncContextManager[None]):
    """:meth:`JobManager.drained` as a plain class (it runs for every backup)."""

    __slots__ = ("_manager", "_section", "_which")

    def __init__(self, manager: JobManager, which: Callable[[Job], bool] | None) -> None:
        self._manager = manager
        self._which = which
        self._section: _DrainSection | None = None

    async def __aenter__(self) -> None:
        manager = self._manager
        which = self._which
        if which is None:
            # QEMU drains every node in turn: the oldest job pauses first.
            jobs = [j for j in manager._jobs.values() if not j.completed]
        else:
            # One node's users, newest first (jobs created inside come first).
            jobs = [j for j in reversed(manager._jobs.values()) if not j.completed and which(j)]
        section = self._section = _DrainSection(which, jobs)
        manager._drain_sections.append(section)
        try:
            for job in jobs:
                job.request_pause()
            if jobs:
                await manager._wait_for(lambda: all(not j.busy or j.completed for j in jobs))
        except BaseException:
            self._leave(section)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        section = self._section
        if section is not None:
            self._leave(section)

    def _leave(self, section: _DrainSection) -> None:
        self._section = None
        sections = self._manager._drain_sections
        try:
            for i, open_section in enumerate(sections):
                if open_section is section:
                    del sections[i]
                    break
        finally:
            for job in section.jobs:
                job.drop_pause()


class JobManager:
    """The registry of jobs and the verbs that steer them.

    :param bus: where job events are published.
    :param clock: the injected clock (kept for drivers and rate limiting).
    :param tables: the state machine to run by (the version profile's).
    """

    def __init__(
        self,
        bus: EventBus,
        clock: Clock,
        tables: JobTables = QEMU_7_2_TABLES,
        *,
        drain_all_on_graph_change: bool = False,
    ) -> None:
        """*drain_all_on_graph_change*: every change of the block graph drains
        every node, so every running or ready job shows a pause and a resume
        per change (QEMU 8.x+; see :meth:`graph_changed`)."""
        self._bus = bus
        self.clock = clock
        self.tables = tables
        self._drain_all = drain_all_on_graph_change
        #: TxnHost: a failed transaction lets its members' runs end first.
        self.finish_runs_before_abort = drain_all_on_graph_change
        #: The state machine's edges (JobHost); set_status checks them.
        self.transitions = tables.transitions
        #: Live jobs by id, oldest first (QEMU lists them newest first).
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[Job, asyncio.Task[None]] = {}
        self._drain_sections: list[_DrainSection] = []
        self._change: asyncio.Future[None] | None = None
        self._listeners: tuple[JobListener, ...] = ()
        #: An extension that holds jobs at their yield points (None: never).
        self.gate: JobGate | None = None
        self._status_listeners: tuple[JobListener, ...] = ()

    def add_listener(self, listener: JobListener) -> None:
        """Have ``listener`` told about every job's life from now on."""
        self._listeners = (*self._listeners, listener)
        if type(listener).job_status_changed is not JobListener.job_status_changed:
            self._status_listeners = (*self._status_listeners, listener)

    # ------------------------------------------------------- JobHost protocol

    @property
    def bus(self) -> EventBus:
        return self._bus

    @property
    def listeners(self) -> tuple[JobListener, ...]:
        return self._listeners

    def _job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        if new is JobStatus.NULL and self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        for listener in self._status_listeners:
            listener.job_status_changed(job, old, new)
        self._job_activity()

    def _adopt(self, job: Job) -> None:
        """Register a job rebuilt from a record (see :mod:`.restore`)."""
        if job.id in self._jobs:
            raise JobStateError(f"job {job.id!r} exists already")
        self._jobs[job.id] = job

    def graph_changed(self, sections: int = 1) -> None:
        """The block graph changed in ``sections`` write-locked sections.

        From QEMU 8.x on, each such section drains every node: every running
        job goes ``paused`` and back to ``running``, every READY job
        ``standby`` and back to ``ready``, whatever nodes it uses, once per
        section. The job is not stopped for it: it cannot notice. A job that
        changes the graph from its own run (a blockdev-create opening and
        closing its image) is not paused by its own sections: it reaches no
        pause point inside them.
        """
        if not self._drain_all or sections <= 0:
            return
        try:
            current = asyncio.current_task()
        except RuntimeError:
            current = None
        for _ in range(sections):
            moving = [
                job
                for job in self._jobs.values()
                if job.status in (JobStatus.RUNNING, JobStatus.READY)
                and not job.run_over
                and (current is None or self._tasks.get(job) is not current)
            ]
            for job in moving:
                paused = JobStatus.PAUSED if job.status is JobStatus.RUNNING else JobStatus.STANDBY
                set_status(job, paused)
            for job in moving:
                back = JobStatus.RUNNING if job.status is JobStatus.PAUSED else JobStatus.READY
                set_status(job, back)

    def _job_activity(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """A job's timer: on the virtual clock when there is one, else the loop's."""
        if isinstance(self.clock, VirtualClock):
            return self.clock.call_later(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    def _job_kicked(self, job: Job) -> None:
        """A job held after its run was woken: its completion runs now,
        unless the gate still holds it."""
        gate = self.gate
        if gate is not None and gate.should_hold(job, "completion"):
            return
        job.unhold()
        if not job.completed:
            _txn.job_completed(self, job)

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait, without polling, until ``predicate()`` holds after some job change."""
        while not predicate():
            if self._change is None:
                self._change = asyncio.get_running_loop().create_future()
            await self._change

    # ----------------------------------------------------------------- lookup

    def jobs_newest_first(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def find(self, job_id: str) -> Job:
        """:raise QMPError: GenericError "Job not found"."""
        job = self.get(job_id)
        if job is None:
            raise QMPError("Job not found")
        return job

    def query_jobs(self) -> list[JobInfo]:
        return [
            JobInfo(
                current_progress=job.current_progress,
                status=job.status._value_,
                total_progress=job.total_progress,
                type=job.type._value_,
                id=job.id,
                error=job.error,
            )
            for job in reversed(self._jobs.values())
        ]

    # -------------------------------------------------------- create / start

    def create(
        self,
        job_id: str,
        driver: JobDriver,
        *,
        txn: Transaction | None = None,
        speed: int = 0,
        auto_finalize: bool = True,
        auto_dismiss: bool = True,
    ) -> Job:
        """Create a job in CREATED (publishes ``created``).

        A grouped ``txn`` is shared; any other job gets a transaction of its own.

        :raise QMPError: "Invalid job ID '%s'", "Job ID '%s' already in use",
            or the set-speed errors for a negative ``speed`` (the job then
            goes CREATED -> NULL first).
        """
        if not _id_wellformed(job_id):
            raise QMPError(f"Invalid job ID '{job_id}'")
        if self.get(job_id) is not None:
            raise QMPError(f"Job ID '{job_id}' already in use")
        if txn is None or not txn.grouped:
            txn = Transaction(grouped=False)
        job = Job(job_id, driver, self, txn, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
        txn.jobs.insert(0, job)
        self._jobs[job_id] = job
        set_status(job, JobStatus.CREATED)
        # A job created inside a drained section is paused by it too.
        for section in self._drain_sections:
            if section.which is None:
                section.jobs.append(job)
            elif section.which(job):
                section.jobs.insert(0, job)
            else:
                continue
            job.request_pause()
        try:
            self.set_speed(job, speed)
        except QMPError:
            self._early_fail(job)
            raise
        return job

    def discard(self, job: Job) -> None:
        """Drop a job whose creation failed after it was created (CREATED -> NULL).

        What QEMU does when a job cannot get hold of its nodes: no cancel,
        no ``aborting``, just ``null``.

        :raise JobStateError: the job is not in CREATED (a bug).
        """
        if job.status is not JobStatus.CREATED or job.started:
            raise JobStateError(f"job {job.id!r} cannot be discarded in {job.status.value}")
        for section in self._drain_sections:
            if job in section.jobs:
                section.jobs.remove(job)
                job.drop_pause()
        self._early_fail(job)

    def _early_fail(self, job: Job) -> None:
        with contextlib.suppress(ValueError):
            job.txn.jobs.remove(job)
        set_status(job, JobStatus.NULL)

    def start(self, job: Job) -> None:
        """Start a CREATED job: publishes ``running`` and schedules its run.

        Like QEMU's synchronous coroutine entry, a job started while a pause
        is requested (e.g. inside a drained section) parks at its first pause
        point right here, so ``paused`` follows ``running`` at once.
        """
        if job.started or job.status is not JobStatus.CREATED:
            raise JobStateError(f"job {job.id!r} cannot be started in {job.status.value}")
        job.start_run()
        task = asyncio.get_running_loop().create_task(self._run_job(job), name=f"job-{job.id}")
        self._tasks[job] = task
        task.add_done_callback(functools.partial(self._task_done, job))

    def _task_done(self, job: Job, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job) is task:
            del self._tasks[job]
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _run_job(self, job: Job) -> None:
        try:
            await job.run_prologue()
            await job.driver.run(job)
        except (JobFailure, OSError) as exc:
            job.ret, job.error = _txn.failure_of(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %r: driver failed unexpectedly", job.id)
            job.ret = -_errno.EIO
            job.error = f"Internal error: {type(exc).__name__}"
        job.end_run()
        await job.hold_point("completion")
        if not job.completed:  # a transaction abort may have finished it meanwhile
            _txn.job_completed(self, job)

    # ------------------------------------------------------------ user verbs

    def _apply_verb(self, job: Job, verb: JobVerb) -> None:
        if job.status not in self.tables.verbs[verb]:
            raise _verb_error(job, verb)

    def change(self, job: Job, copy_mode: str) -> None:
        """block-job-change (the release's verb table has ``change``).

        :raise QMPError: the verb error, then the driver's.
        """
        self._apply_verb(job, JobVerb.CHANGE)
        job.driver.change(job, copy_mode)

    def pause(self, job: Job) -> None:
        """job-pause / block-job-pause.

        :raise QMPError: the verb error, or "Job is already paused".
        """
        self._apply_verb(job, JobVerb.PAUSE)
        if job.user_paused:
            raise QMPError("Job is already paused")
        job.user_paused = True
        job.request_pause()

    def resume(self, job: Job) -> None:
        """job-resume / block-job-resume.

        :raise QMPError: "Can't resume a job that was not paused" (checked
            before the verb table), or the verb error.
        """
        if not job.user_paused or job.pause_count <= 0:
            raise QMPError("Can't resume a job that was not paused")
        self._apply_verb(job, JobVerb.RESUME)
        job.driver.user_resume(job)
        job.user_paused = False
        job.drop_pause()

    def cancel(self, job: Job, force: bool = True) -> None:
        """job-cancel (always force=True).

        :raise QMPError: the verb error.
        """
        self._apply_verb(job, JobVerb.CANCEL)
        self._cancel(job, force)

    def complete(self, job: Job) -> None:
        """job-complete / block-job-complete.

        :raise QMPError: the verb error, "The active block job '%s' cannot be
            completed", or whatever the driver's complete hook raises.
        """
        self._apply_verb(job, JobVerb.COMPLETE)
        hook = job.driver.complete
        if job.cancelled or hook is None:
            raise QMPError(f"The active block job '{job.id}' cannot be completed")
        hook(job)
        job.should_complete = True
        if not job.parked:
            job.wake()

    def finalize(self, job: Job) -> None:
        """job-finalize / block-job-finalize: finalizes the whole transaction.

        :raise QMPError: the verb error.
        """
        self._apply_verb(job, JobVerb.FINALIZE)
        _txn.finalize(self, job)

    def dismiss(self, job: Job) -> None:
        """job-dismiss / block-job-dismiss.

        :raise QMPError: the verb error.
        """
        self._apply_verb(job, JobVerb.DISMISS)
        _txn.dismiss(job, self)

    def set_speed(self, job: Job, speed: int) -> None:
        """block-job-set-speed (also applied at creation).

        :raise QMPError: the verb error, or "Parameter 'speed' expects a
            non-negative value".
        """
        self._apply_verb(job, JobVerb.SET_SPEED)
        if speed < 0:
            raise QMPError("Parameter 'speed' expects a non-negative value")
        old = job.speed
        job.speed = speed
        job.driver.set_speed(job, speed)
        if speed and speed <= old:
            return
        # A higher (or no) limit takes effect at once: cut a rate-limit sleep short.
        job.wake("timer_pending")

    # --------------------------------------------------------- cancel (core)

    def cancel_async(self, job: Job, force: bool) -> None:
        """Flag ``job`` as cancelled (QEMU's job_cancel_async); nothing wakes it yet."""
        force = job.driver.cancel_hook(job, force)
        if job.user_paused:
            job.driver.user_resume(job)
            job.drop_user_pause()
        # A soft request on a job whose run is over is ignored.
        if force or not job.run_over:
            job.cancelled = True
            job.force_cancel = job.force_cancel or force

    def _cancel(self, job: Job, force: bool) -> None:
        if job.status is JobStatus.CONCLUDED:
            _txn.dismiss(job, self)
            return
        self.cancel_async(job, force)
        if not job.started:
            _txn.job_completed(self, job)
        elif job.run_over:
            if job.is_cancelled:
                _txn.abort(self, job)
        else:
            job.wake()

    # ------------------------------------------------ drain, quit, shutdown

    def drained(
        self, which: Callable[[Job], bool] | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """A drained section: every job that can pause is paused while inside.

        Entering raises the pause count of every job whose run has not ended
        (only those ``which`` selects, when given: QEMU drains one node's
        users) and waits until each one has parked (or is not busy, or has
        ended); jobs created inside are paused too. Leaving drops those pauses.
        """
        return _Drained(self, which)

    async def cancel_all(self) -> None:
        """Force-cancel every job, newest first, and wait until all are gone.

        What the daemon does on ``quit``: inside a drained section, a
        concluded job is dismissed, any other is cancelled and waited for
        until it concluded (then dismissed in turn if it stays).
        """
        async with self.drained():
            while self._jobs:
                job = next(reversed(self._jobs.values()))
                if job.status is JobStatus.CONCLUDED:
                    _txn.dismiss(job, self)
                    continue
                self._cancel(job, True)
                await self._wait_for(_has_concluded(job))

    async def aclose(self) -> None:
        """Shutdown: stop every job task (no events), and forget all jobs."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for job in self._jobs.values():
            job.stop_timer()
        self._jobs.clear()
        self._job_activity()
