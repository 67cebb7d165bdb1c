"""The hook for an extension that holds jobs where QEMU's jobs yield.

A :class:`JobGate` registered with the manager (``JobManager.gate``) is asked,
at a few fixed *sites* of a job's life, whether the job must wait there:

* ``"progress"``: a copy loop, before each chunk (a pause point);
* ``"ready"``: a mirror in sync, just before RUNNING -> READY;
* ``"completion"``: the job's run has ended and its completion has not run
  yet (QEMU's job_exit bottom half is still to come): the next status is
  WAITING or ABORTING.

At the first two the job waits as at a pause point (not busy: drains and
pauses work on it); at ``"completion"`` it waits like QEMU's deferred job.
Without a gate (the default) nothing waits anywhere.

Must not import: sockets, JSON, block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .job import Job

HoldSite = Literal["progress", "ready", "completion"]


class JobGate(Protocol):
    def should_hold(self, job: Job, site: HoldSite) -> bool:
        """Whether ``job`` must wait at ``site`` now (asked again after every wake-up)."""
        ...

    def job_held(self, job: Job, site: HoldSite) -> None:
        """``job`` starts waiting at ``site``."""
        ...

    def stepping(self, job: Job) -> bool:
        """``job`` copies a step: no rate limit until it is held again."""
        ...

    def progress_limit(self, job: Job) -> int | None:
        """Progress units a copy loop may still do before it must stop at a
        hold (None: no limit)."""
        ...
