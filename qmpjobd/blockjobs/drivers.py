"""The job drivers: ``backup``, ``mirror`` and ``create``.

A block job driver holds its nodes for its whole life (job blockers,
references, a backend on a mirror's target) and lets them go in ``clean``,
which the engine runs for every job that was created, whatever its end.

Must not import: sockets, JSON.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import KW_ONLY, dataclass
from typing import Literal

from ..block import BlockGraph, BlockNode
from ..clock import Clock
from ..errors import QMPError
from ..jobs import Job, JobDriver, JobFailure, JobType
from .copy import CLUSTER, Copier, Extent, round_up
from .policy import OnError
from .ratelimit import RateLimiter

#: How long an idle job (sync=none backup, READY mirror) sleeps between
#: wake-ups; pause, cancel, complete and set-speed wake it earlier.
IDLE_SECONDS = 3600.0

BackupSync = Literal["full", "top", "none"]


@dataclass(eq=False, repr=False)
class BlockJobDriver(JobDriver):
    """What backup and mirror share: nodes, holds, rate limit, error policies.

    A dataclass, so that backup and mirror add their own fields without
    restating these: the source and the target come first, the rest by keyword.
    """

    source: BlockNode
    target: BlockNode
    _: KW_ONLY
    clock: Clock
    executor: Executor
    on_source_error: OnError = "report"
    on_target_error: OnError = "report"
    #: The target reads zeros where nothing was written (a new file), so
    #: holes of the source need no write.
    zero_target: bool = False

    def __post_init__(self) -> None:
        self.nodes: tuple[BlockNode, ...] = (self.source, self.target)
        self.limiter = RateLimiter(self.clock)
        self._releases: list[Callable[[], None]] = []

    def hold(self, release: Callable[[], None]) -> None:
        """Keep something until the job is cleaned up (released in reverse order)."""
        self._releases.append(release)

    def release_all(self) -> None:
        while self._releases:
            self._releases.pop()()

    def set_speed(self, job: Job, speed: int) -> None:
        self.limiter.set_speed(speed)

    def user_resume(self, job: Job) -> None:
        """Resuming a block job resets its io-status (QEMU's block_job_user_resume)."""
        job.io_status = "ok"

    def clean(self, job: Job) -> None:
        self.release_all()

    #: Whether a request that stopped the job is tried once more when the job
    #: is then cancelled (backup does: its next block-copy call runs first).
    retry_stopped_on_cancel = False
    #: Whether blocks that are neither data nor zeros are copied (backup) or
    #: discarded (mirror), as QEMU's block-copy and mirror do.
    copy_unknown = True

    def copier(self, job: Job) -> Copier:
        return Copier(
            job,
            self.source,
            self.target,
            executor=self.executor,
            limiter=self.limiter,
            on_source_error=self.on_source_error,
            on_target_error=self.on_target_error,
            zero_target=self.zero_target,
            retry_stopped_on_cancel=self.retry_stopped_on_cancel,
            copy_unknown=self.copy_unknown,
        )


@dataclass(eq=False, repr=False)
class BackupDriver(BlockJobDriver):
    """``backup``: a point-in-time copy of the source onto the target.

    ``full`` (and ``top``: our nodes have no backing file, so, like QEMU,
    top means full) copies every cluster, ``none`` copies nothing and runs
    until cancelled (with no guest, nothing ever writes to the source).
    Progress counts 64 KiB clusters.
    """

    retry_stopped_on_cancel = True

    job_type = JobType.BACKUP

    sync: BackupSync

    async def run(self, job: Job) -> None:
        size = self.source.size
        job.progress_set_remaining(round_up(size, CLUSTER))
        if self.sync == "none":
            while not job.is_cancelled:
                await job.sleep(IDLE_SECONDS)
            return

        def progress(ext: Extent) -> None:
            job.progress_update(round_up(ext.end, CLUSTER) - ext.offset)

        copier = self.copier(job)
        try:
            if await copier.copy_all(0, size, progress):
                await copier.flush()
        finally:
            copier.close()


@dataclass(eq=False, repr=False)
class MirrorDriver(BlockJobDriver):
    """``mirror``: copies the source, goes READY and stays in sync until
    completed (``job-complete``) or cancelled.

    A soft ``block-job-cancel`` in READY ends the job successfully without
    switching over; any other cancel is a force cancel. Progress counts bytes.
    """

    copy_unknown = False

    job_type = JobType.MIRROR

    _: KW_ONLY
    copy_all: bool

    def cancel_hook(self, job: Job, force: bool) -> bool:
        return force or not job.ready

    def complete(self, job: Job) -> None:
        """Refused until the mirror is in sync (the verb table only allows READY)."""
        if not job.ready:
            raise QMPError(f"The active block job '{job.id}' cannot be completed")

    async def run(self, job: Job) -> None:
        size = self.source.size
        if self.target.size != size:
            raise JobFailure("Source and target image have different sizes", errno_mod.EINVAL)
        copier = self.copier(job)
        try:
            if self.copy_all:
                job.progress_set_remaining(size)
                done = await copier.copy_all(0, size, lambda e: job.progress_update(e.length))
                if not done or not await copier.flush():
                    return
            job.transition_to_ready()
            while not (job.should_complete or job.cancel_requested):
                await job.sleep(IDLE_SECONDS)
                if job.is_cancelled:
                    return
            await copier.flush()
        finally:
            copier.close()


class CreateDriver(JobDriver):
    """``create``: blockdev-create of a ``file`` image. Progress goes 0/1 -> 1/1."""

    job_type = JobType.CREATE

    def __init__(self, graph: BlockGraph, filename: str, size: int, preallocation: str) -> None:
        self.graph = graph
        self.filename = filename
        self.size = size
        self.preallocation = preallocation

    async def run(self, job: Job) -> None:
        job.progress_set_remaining(1)
        try:
            await self.graph.create_file(self.filename, self.size, self.preallocation)
        except QMPError as exc:
            raise JobFailure(exc.desc) from exc
        finally:
            job.progress_update(1)
