"""One job: its plain-data state, its transaction, and the driver-facing coroutines.

:func:`set_status` is the only code that changes ``Job.status``: it checks
the transition table, logs, and publishes ``JOB_STATUS_CHANGE``. A
:class:`Job` holds the state QEMU keeps per job (pause count, user pause,
cancel flags, progress, speed, error, options); everything that belongs to
the running asyncio task (the wake-up future, the sleep timer, busy/parked)
sits in separate private fields, so the record itself stays plain data.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

from ..events import EventBus
from .tables import COMPLETED_STATUSES, JobStatus, JobType

if TYPE_CHECKING:
    from .driver import JobDriver
    from .gate import HoldSite, JobGate
    from .listener import JobListener
    from .txn import Transaction

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    """A timer: asyncio's, or a virtual clock's."""

    def cancel(self) -> None: ...


IoStatus = Literal["ok", "failed", "nospace"]
IoOperation = Literal["read", "write"]
ErrorAction = Literal["ignore", "report", "stop"]


class JobStateError(AssertionError):
    """An illegal status transition was attempted: a bug in the engine or a driver."""


class JobHost(Protocol):
    """What a job needs from the engine that owns it."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def listeners(self) -> tuple[JobListener, ...]: ...

    #: The state machine's edges (the profile's tables).
    transitions: Mapping[JobStatus, frozenset[JobStatus]]

    def _job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None: ...

    def _job_activity(self) -> None: ...

    @property
    def gate(self) -> JobGate | None: ...

    def _job_kicked(self, job: Job) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


def set_status(job: Job, new: JobStatus) -> None:
    """Move ``job`` to ``new``: the one function that changes a job's status.

    :raise JobStateError: when the table has no such edge (a bug).
    """
    old = job.status
    if new not in job._host.transitions[old]:
        raise JobStateError(f"job {job.id!r}: illegal transition {old.value} -> {new.value}")
    job.status = new
    # A StrEnum prints as its value; _value_ is the plain str, without the
    # descriptor call that .value costs on this hot path.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("job %r: %s -> %s", job.id, old, new)
    host = job._host
    if new is not old:
        host.bus.publish("JOB_STATUS_CHANGE", {"status": new._value_, "id": job.id})
    host._job_status_changed(job, old, new)


class Job:
    """A job: plain state plus the hooks into its running task.

    Created only by :class:`~qmpjobd.jobs.manager.JobManager`.
    """

    def __init__(
        self,
        job_id: str,
        driver: JobDriver,
        host: JobHost,
        txn: Transaction,
        *,
        auto_finalize: bool,
        auto_dismiss: bool,
    ) -> None:
        # --- the record (plain data) ---
        self.id = job_id
        self.type: JobType = driver.job_type
        self.status = JobStatus.UNDEFINED
        self.pause_count = 1
        self.user_paused = False
        self.cancelled = False
        self.force_cancel = False
        self.should_complete = False
        self.current_progress = 0
        self.total_progress = 0
        self.speed = 0
        #: the error message once the job failed or was cancelled
        self.error: str | None = None
        #: 0, or a negative errno once the job failed
        self.ret = 0
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.io_status: IoStatus = "ok"
        self.txn = txn
        # --- the runtime (belongs to the task, not to the record) ---
        self.driver = driver
        self._host = host
        self._started = False
        self._deferred = False  # the run has ended; completion is the engine's
        self._busy = False
        self._parked = False
        self._parked_from = JobStatus.UNDEFINED
        self._waker: asyncio.Future[None] | None = None
        self._timer: Cancellable | None = None
        #: where a gate holds the job now (see jobs/gate.py), and the
        #: future a job held after its run waits on
        self.held_at: HoldSite | None = None
        self._hold_waker: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id!r} {self.type.value} {self.status.value}>"

    # ----------------------------------------------------------------- views

    @property
    def started(self) -> bool:
        return self._started

    @property
    def busy(self) -> bool:
        """The job's task is running right now (false while parked or sleeping)."""
        return self._busy

    @property
    def paused(self) -> bool:
        """A pause was requested (pause_count > 0)."""
        return self.pause_count > 0

    @property
    def ready(self) -> bool:
        """READY or STANDBY."""
        return self.status in (JobStatus.READY, JobStatus.STANDBY)

    @property
    def completed(self) -> bool:
        """The job's run has ended (WAITING, PENDING, ABORTING, CONCLUDED, NULL)."""
        return self.status in COMPLETED_STATUSES

    @property
    def is_cancelled(self) -> bool:
        """A force cancel was requested: the driver must stop at once."""
        return self.cancelled and self.force_cancel

    @property
    def cancel_requested(self) -> bool:
        """Any cancel (soft or force) was requested."""
        return self.cancelled

    # -------------------------------------------------------------- progress

    def progress_update(self, done: int) -> None:
        """Count ``done`` more units of work as finished."""
        self.current_progress += done

    def progress_set_remaining(self, remaining: int) -> None:
        """Set the total so that ``remaining`` units are left."""
        self.total_progress = self.current_progress + remaining

    def progress_increase_remaining(self, delta: int) -> None:
        """Add ``delta`` units of work to the total."""
        self.total_progress += delta

    # ------------------------------------------------- driver-facing actions

    async def pause_point(self) -> None:
        """Park here if a pause is requested and the job is not force-cancelled.

        RUNNING becomes PAUSED and READY becomes STANDBY; the job goes back
        when the pause count returns to 0 (or a force cancel wakes it).
        """
        if not self._should_pause():
            return
        await self.driver.pause(self)
        if self._should_pause():
            self._park()
            await self._wait_woken()
        self.driver.resume(self)

    async def sleep(self, seconds: float) -> None:
        """Rate-limit sleep: not busy; woken early by pause, cancel and set-speed.

        Also a pause point: a pending pause is honoured instead of sleeping.
        """
        if self.is_cancelled:
            return
        if not self._should_pause():
            self._prepare_wait(max(0.0, seconds))
            await self._wait_woken()
        await self.pause_point()

    async def hold_point(self, site: HoldSite) -> None:
        """Wait here while the engine's gate holds the job (see jobs/gate.py).

        Inside the run the job waits as at a pause point: a pause parks it,
        a cancel or a release wakes it. After its run (``completion``) it
        waits until released, or kicked by a transaction abort.
        """
        gate = self._host.gate
        if gate is None:
            return
        while not (self._deferred and self.completed) and gate.should_hold(self, site):
            self.held_at = site
            try:
                if self._deferred:
                    self._hold_waker = asyncio.get_running_loop().create_future()
                    gate.job_held(self, site)
                    self._host._job_activity()
                    await self._hold_waker
                else:
                    self._prepare_wait(None)
                    gate.job_held(self, site)
                    await self._wait_woken()
            finally:
                self.held_at = None
                self._hold_waker = None
            if not self._deferred:
                await self.pause_point()

    def unhold(self) -> None:
        """Let a job held after its run go (its completion is the caller's)."""
        if self._hold_waker is not None and not self._hold_waker.done():
            self._hold_waker.set_result(None)

    @property
    def stepping(self) -> bool:
        """The job copies a step (an extension): its copy loop does not throttle."""
        gate = self._host.gate
        return gate is not None and gate.stepping(self)

    def progress_limit(self) -> int | None:
        """Progress units a copy loop may do before a hold stops it (None: no limit)."""
        gate = self._host.gate
        return None if gate is None else gate.progress_limit(self)

    def transition_to_ready(self) -> None:
        """RUNNING -> READY; the listeners hear of it right after."""
        set_status(self, JobStatus.READY)
        for listener in self._host.listeners:
            listener.job_ready(self)

    def report_io_error(self, operation: IoOperation, action: ErrorAction, errno: int) -> None:
        """Report a failed I/O request with the action the error policy chose.

        The listeners hear of it first. For ``stop`` the job is paused as by
        the user (unless it already is) and io-status becomes ``failed``
        (``nospace`` for ENOSPC) if it was ``ok``; the driver parks at its
        next pause point and retries after resume.
        """
        for listener in self._host.listeners:
            listener.job_io_error(self, operation, action)
        if action == "stop":
            if not self.user_paused:
                self.request_pause()
                self.user_paused = True
            if self.io_status == "ok":
                self.io_status = "nospace" if errno == _errno.ENOSPC else "failed"

    # ------------------------------------------------- the engine's runner API

    @property
    def run_over(self) -> bool:
        """The driver's run has ended; what follows is the engine's."""
        return self._deferred

    @property
    def parked(self) -> bool:
        """Parked at a pause point (PAUSED or STANDBY)."""
        return self._parked

    def start_run(self) -> None:
        """CREATED -> RUNNING. A job started while a pause is requested (in a
        drained section) parks right here, as QEMU's synchronous entry does."""
        self._started = True
        self.pause_count -= 1
        self._busy = True
        set_status(self, JobStatus.RUNNING)
        if self._should_pause():
            self._park()

    async def run_prologue(self) -> None:
        """The first thing the job's task does: wait out a pause taken at
        start, then pass the first pause point."""
        if self._waker is not None:  # parked at start
            await self._wait_woken()
            self.driver.resume(self)
        await self.pause_point()

    def end_run(self) -> None:
        """The driver's run is over (whatever its outcome)."""
        self._deferred = True
        self._busy = False

    def set_idle(self) -> None:
        """Not busy any more (a job leaving for NULL)."""
        self._busy = False

    def drop_user_pause(self) -> None:
        """Forget the user's pause without waking the job (a cancel does that)."""
        self.user_paused = False
        self.pause_count -= 1

    def stop_timer(self) -> None:
        """Shutdown: cancel a pending sleep timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------- engine-internal

    def _should_pause(self) -> bool:
        return self.pause_count > 0 and not self.is_cancelled

    def _park(self) -> None:
        """Enter the parked state synchronously (the job's side of a pause)."""
        self._parked_from = self.status
        set_status(self, JobStatus.STANDBY if self.status is JobStatus.READY else JobStatus.PAUSED)
        self._parked = True
        self._prepare_wait(None)

    def _prepare_wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waker = loop.create_future()
        if timeout is not None:
            self._timer = self._host.call_later(timeout, self._timer_fired)
        self._busy = False
        self._host._job_activity()

    async def _wait_woken(self) -> None:
        waker = self._waker
        assert waker is not None
        try:
            await waker
        finally:
            self._waker = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        self.wake()

    def wake(self, when: Literal["always", "timer_pending", "no_timer"] = "always") -> None:
        """Wake the job's task if it is parked or sleeping (QEMU's job_enter_cond).

        A parked job returns to the state it parked from right here, so its
        status change is ordered with the action that woke it.
        """
        if self._hold_waker is not None and not self._hold_waker.done():
            # Held after its run: unless the gate still holds it, its
            # completion runs now, as QEMU's deferred job's would.
            self._host._job_kicked(self)
            return
        if not self._started or self._deferred or self._busy:
            return
        if when == "timer_pending" and self._timer is None:
            return
        if when == "no_timer" and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._busy = True
        if self._parked:
            self._parked = False
            set_status(self, self._parked_from)
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)
        self._host._job_activity()

    def request_pause(self) -> None:
        """An internal or user pause request (QEMU's job_pause)."""
        self.pause_count += 1
        if not self._parked:
            self.wake()

    def drop_pause(self) -> None:
        """Drop one pause request (QEMU's job_resume)."""
        if self.pause_count <= 0:
            raise JobStateError(f"job {self.id!r}: resume with pause_count 0")
        self.pause_count -= 1
        if self.pause_count == 0:
            # A sleeping job keeps its timer; only a parked job is kicked.
            self.wake("no_timer")
