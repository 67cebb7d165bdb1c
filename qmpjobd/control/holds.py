"""Hold points: stop a job just before it enters a status, or once its
progress reaches an offset, until a test releases it.

:class:`Holds` is the engine's :class:`~qmpjobd.jobs.JobGate`. A hold names
a job id (the job may not exist yet) and is used once: it is gone when
released. A job can be held only where QEMU's job yields and a QMP command
could observe it (see :data:`REFUSED` for everywhere else):

* ``offset``: in a copy loop (backup, mirror), before the chunk that would
  take its progress past the offset (chunks are cut to stop there exactly);
* status ``ready``: a mirror in sync, still ``running``;
* status ``waiting`` or ``aborting``: the run is over, the completion has
  not run yet (QEMU's deferred job): the job still shows its last status.

While held the job is in a real state and every verb acts on it as QEMU's
would there; a hold inside the run is a pause point (a pause or a drain
parks it, a force cancel ends the hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import QMPError
from ..jobs import HoldSite, Job, JobManager

#: Statuses a job can be held before, and where it then waits.
HOLDABLE: dict[str, HoldSite] = {
    "ready": "ready",
    "waiting": "completion",
    "aborting": "completion",
}
#: Why the other statuses cannot be held before.
REFUSED: dict[str, str] = {
    "undefined": "no job is ever in it",
    "created": "the command that starts a job creates it",
    "running": "a job starts or resumes running inside the command that starts or resumes it",
    "paused": "a job pauses at once when a command or a drain asks it to",
    "standby": "a job pauses at once when a command or a drain asks it to",
    "pending": "a job enters it in the same step as 'waiting'; hold it before 'waiting'",
    "concluded": "a job concludes in the same step as 'pending' or 'aborting', or in job-finalize",
    "null": "a job goes away in the step that concludes it, or in job-dismiss",
}


@dataclass(eq=False)
class Hold:
    number: int
    job: str
    status: str | None = None
    offset: int | None = None
    #: set by a step: shown as such
    step: bool = False

    def wire(self, held: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"hold": self.number, "job": self.job}
        if self.status is not None:
            out["status"] = self.status
        if self.offset is not None:
            out["offset"] = self.offset
        if self.step:
            out["step"] = True
        out["held"] = held
        return out


def _next_status(job: Job) -> str:
    """What a job whose run is over enters next."""
    return "aborting" if job.ret != 0 or job.is_cancelled else "waiting"


class Holds:
    """Every hold, by number; the gate the job engine asks."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self._holds: list[Hold] = []
        self._counter = 0
        #: the hold each job waits at now
        self._held: dict[Job, Hold] = {}

    # -- JobGate --------------------------------------------------------------

    def _match(self, job: Job, site: HoldSite) -> Hold | None:
        if site != "completion" and job.is_cancelled:
            return None
        for hold in self._holds:
            if hold.job != job.id:
                continue
            if site == "progress":
                if hold.offset is not None and hold.offset <= job.current_progress:
                    return hold
            elif site == "ready":
                if hold.status == "ready":
                    return hold
            elif hold.status == _next_status(job):
                return hold
        return None

    def should_hold(self, job: Job, site: HoldSite) -> bool:
        self._held.pop(job, None)
        hold = self._match(job, site)
        if hold is None:
            return False
        self._held[job] = hold
        return True

    def job_held(self, job: Job, site: HoldSite) -> None:
        pass

    def stepping(self, job: Job) -> bool:
        return any(
            h.step and h.job == job.id and h.offset is not None and h.offset > job.current_progress
            for h in self._holds
        )

    def progress_limit(self, job: Job) -> int | None:
        ahead = [
            h.offset - job.current_progress
            for h in self._holds
            if h.job == job.id and h.offset is not None and h.offset > job.current_progress
        ]
        return min(ahead) if ahead else None

    # -- commands -------------------------------------------------------------

    def add(self, job_id: str, *, status: str | None, offset: int | None) -> Hold:
        """:raise QMPError: both or neither of status and offset, or a status
        no job can be held before."""
        if (status is None) == (offset is None):
            raise QMPError("Exactly one of 'status' and 'offset' must be given")
        if status is not None:
            if status in REFUSED:
                raise QMPError(f"Cannot hold a job before status '{status}': {REFUSED[status]}")
            job = self.jobs.get(job_id)
            if status == "ready" and job is not None and job.type.value != "mirror":
                raise QMPError(f"Job '{job_id}' of type '{job.type.value}' never becomes ready")
        if offset is not None and offset < 0:
            raise QMPError("Parameter 'offset' expects a non-negative value")
        return self._add(Hold(0, job_id, status, offset))

    def _add(self, hold: Hold) -> Hold:
        self._counter += 1
        hold.number = self._counter
        self._holds.append(hold)
        return hold

    def release(self, job_id: str, number: int | None = None) -> None:
        """Drop the job's holds (or one of them); a job held at one goes on.

        :raise QMPError: no such hold.
        """
        mine = [h for h in self._holds if h.job == job_id]
        if number is not None:
            mine = [h for h in mine if h.number == number]
            if not mine:
                raise QMPError(f"Job '{job_id}' has no hold {number}")
        elif not mine:
            raise QMPError(f"Job '{job_id}' has no hold")
        for hold in mine:
            self._holds.remove(hold)
        self._kick(job_id)

    def release_all(self) -> None:
        """Drop every hold without waking anyone (the daemon stops: the
        cancel that follows wakes the jobs, and no job may wait at one)."""
        self._holds.clear()

    def _kick(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.held_at is not None:
            job.wake()

    def step(self, job_id: str, nbytes: int) -> Hold:
        """Let a job held in its copy loop copy ``nbytes`` more, then hold it again.

        :raise QMPError: no such job, not held in a copy loop, or ``nbytes`` < 1.
        """
        job = self.jobs.find(job_id)
        if job.held_at != "progress":
            raise QMPError(f"Job '{job_id}' is not held in a copy loop")
        if nbytes < 1:
            raise QMPError("Parameter 'bytes' expects a positive value")
        for hold in [h for h in self._holds if h.job == job_id]:
            if hold.offset is not None and hold.offset <= job.current_progress:
                self._holds.remove(hold)
        hold = self._add(Hold(0, job_id, offset=job.current_progress + nbytes, step=True))
        self._kick(job_id)
        return hold

    def query(self) -> list[dict[str, Any]]:
        out = []
        for hold in self._holds:
            job = self.jobs.get(hold.job)
            held = job is not None and job.held_at is not None and self._held.get(job) is hold
            out.append(hold.wire(held))
        return out
