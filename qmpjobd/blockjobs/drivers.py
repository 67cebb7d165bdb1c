"""The job drivers: ``backup``, ``mirror`` and ``create``.

A block job driver holds its nodes for its whole life (job blockers,
references, a backend on a mirror's target) and lets them go in ``clean``,
which the engine runs for every job that was created, whatever its end.

Must not import: sockets, JSON.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

from ..block import BlockGraph, BlockNode
from ..block.drivers.qcow2 import QCOW2_CREATE_SECTIONS, Qcow2CreateOptions, create_on
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
        self._node_releases: list[Callable[[], None]] = []

    def hold(self, release: Callable[[], None]) -> None:
        """Keep something until the job is cleaned up (released in reverse order)."""
        self._releases.append(release)

    def hold_node(self, release: Callable[[], None]) -> None:
        """Keep a node the job takes as its own (QEMU's block_job_add_bdrv:
        a reference, a blocker) until the job is freed (:meth:`release_nodes`)."""
        self._node_releases.append(release)

    def release_all(self) -> None:
        while self._releases:
            self._releases.pop()()

    def release_nodes(self, job: Job) -> None:
        while self._node_releases:
            self._node_releases.pop()()

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

    #: The copy's granularity (a backup's block-copy cluster size).
    cluster: int = CLUSTER

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
            cluster=self.cluster,
        )


@dataclass(eq=False, repr=False)
class BackupDriver(BlockJobDriver):
    """``backup``: a point-in-time copy of the source onto the target.

    ``full`` copies every cluster, ``top`` the clusters the source's own
    layer holds (all of them for a node without a backing node, as in
    QEMU; progress then counts only those), ``none`` copies nothing and runs
    until cancelled (with no guest, nothing ever writes to the source).
    Progress counts clusters: 64 KiB, or the target's cluster size or
    ``x-perf``'s ``min-cluster-size`` when larger (QEMU's block-copy). With
    ``discard_source``, what was copied is then discarded on the source
    (errors ignored, as in QEMU).
    """

    retry_stopped_on_cancel = True

    job_type = JobType.BACKUP
    #: QEMU 10.0: dropping the copy-before-write filter and the job's nodes.
    free_sections = 1

    def finalize_sections(self, job: Job) -> int:
        return 3

    sync: BackupSync
    _: KW_ONLY
    discard_source: bool = False

    async def _discard_source(self, ext: Extent) -> None:
        if not self.discard_source:
            return
        # QEMU ignores a failed discard of the source.
        with contextlib.suppress(OSError):
            await self.source.discard(ext.offset, ext.length)

    async def run(self, job: Job) -> None:
        size = self.source.size
        cluster = self.cluster
        job.progress_set_remaining(round_up(size, cluster))
        if self.sync == "none":
            while not job.is_cancelled:
                await job.sleep(IDLE_SECONDS)
            return

        def progress(ext: Extent) -> None:
            job.progress_update(round_up(ext.end, cluster) - ext.offset)

        copier = self.copier(job)
        if self.discard_source:
            copier.after_copy = self._discard_source
        try:
            if self.sync == "top" and self.source.backing_node() is not None:
                if await self._copy_top(job, copier, size):
                    await copier.flush()
            elif await copier.copy_all(0, size, progress):
                await copier.flush()
        finally:
            copier.close()

    async def _copy_top(self, job: Job, copier: Copier, size: int) -> bool:
        """``sync: top``: copy the clusters allocated in the source's own layer."""
        cluster = self.cluster
        ranges: list[tuple[int, int]] = []
        offset = 0
        while offset < size:
            allocated, n = await self.source.allocated(offset, size - offset)
            end = min(round_up(offset + n, cluster), size) if allocated else offset + n
            if allocated:
                if ranges and ranges[-1][1] >= offset:
                    ranges[-1] = (ranges[-1][0], end)
                else:
                    ranges.append((offset - offset % cluster, end))
            offset = end
        job.progress_set_remaining(sum(round_up(e, cluster) - s for s, e in ranges))
        for start, end in ranges:
            stop = end

            def progress(ext: Extent) -> None:
                job.progress_update(round_up(min(ext.end, stop), cluster) - ext.offset)  # noqa: B023

            if not await copier.copy_all(start, end, progress):
                return False
        return True


@dataclass(eq=False, repr=False)
class MirrorDriver(BlockJobDriver):
    """``mirror``: copies the source, goes READY and stays in sync until
    completed (``job-complete``) or cancelled.

    A soft ``block-job-cancel`` in READY ends the job successfully without
    switching over; any other cancel is a force cancel. Progress counts bytes.

    However its run ends, the source is drained until the job is finalized
    (QEMU's mirror_run leaves it drained for mirror_exit_common), so a mirror
    waiting in PENDING reports ``"paused": true``.
    """

    copy_unknown = False
    _source_drained = False

    job_type = JobType.MIRROR
    #: QEMU 10.0: dropping the mirror filter and the job's nodes; one more
    #: section when the target replaces the source.
    free_sections = 1

    def finalize_sections(self, job: Job) -> int:
        return 5 if job.ret == 0 and job.should_complete else 4

    _: KW_ONLY
    copy_all: bool
    #: "background": guest writes only dirty the source; "write-blocking":
    #: they reach the target before they complete (QEMU's active mirror);
    #: block-job-change may switch the first to the second.
    copy_mode: str = "background"
    #: query-block-jobs' ``actively-synced``: in write-blocking mode and in
    #: sync at the last pass of the mirror loop. The loop passes when the
    #: job goes READY and whenever something wakes it (a pause, a complete,
    #: set-speed), not when block-job-change switches the mode.
    actively_synced: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        #: clusters written by a guest since they were copied (dirty tracking)
        self.dirty: set[int] = set()
        #: the initial copy has reached here: writes beyond it need no tracking
        self._frontier = 0 if self.copy_all else self.source.size
        self._tracking = True

    def _pass(self) -> None:
        """One pass of the mirror loop with nothing to copy."""
        if self.copy_mode != "background":
            self.actively_synced = True

    async def pause(self, job: Job) -> None:
        # Woken for a pause, the loop passes once before it parks.
        if job.ready:
            self._pass()

    def change(self, job: Job, copy_mode: str) -> None:
        """QEMU's mirror_change: only background -> write-blocking; a no-op
        to the current mode."""
        if copy_mode == self.copy_mode:
            return
        if copy_mode == "background":
            raise QMPError("Change to copy mode 'background' is not implemented")
        self.copy_mode = copy_mode

    def cancel_hook(self, job: Job, force: bool) -> bool:
        return force or not job.ready

    def complete(self, job: Job) -> None:
        """Refused until the mirror is in sync (the verb table only allows READY)."""
        if not job.ready:
            raise QMPError(f"The active block job '{job.id}' cannot be completed")

    async def guest_wrote(self, job: Job, offset: int, data: bytes) -> None:
        """A guest wrote ``data`` at ``offset`` of the source (already written).

        In write-blocking mode the write goes to the target too before it
        completes; in background mode its clusters become dirty, the job's
        remaining work grows, and an idle job wakes to copy them.
        """
        if not self._tracking or job.run_over:
            return
        length = len(data)
        if self.copy_mode == "write-blocking":
            await self.target.write(offset, data)
            job.progress_increase_remaining(length)
            job.progress_update(length)
            return
        first, last = offset // CLUSTER, (offset + length - 1) // CLUSTER
        size = self.source.size
        added = 0
        for cluster in range(first, last + 1):
            start = cluster * CLUSTER
            if start >= self._frontier or cluster in self.dirty:
                continue
            self.dirty.add(cluster)
            added += min(start + CLUSTER, size) - start
        if added:
            job.progress_increase_remaining(added)
            job.wake("timer_pending")

    async def _copy_dirty(self, job: Job, copier: Copier) -> bool:
        """Copy the dirty clusters, lowest first, until none is left; False when cancelled."""
        size = self.source.size
        while self.dirty:
            cluster = min(self.dirty)
            self.dirty.discard(cluster)
            start = cluster * CLUSTER
            if not await copier.copy_all(
                start, min(start + CLUSTER, size), lambda e: job.progress_update(e.length)
            ):
                return False
        return True

    async def _in_sync(self, job: Job, copier: Copier) -> bool:
        """READY, then keep the target in sync until completed or cancelled;
        False when the job must stop at once (a force cancel)."""
        await job.hold_point("ready")
        job.transition_to_ready()
        self._pass()
        while not (job.should_complete or job.cancel_requested):
            if self.dirty:
                if not await self._copy_dirty(job, copier):
                    return False
                continue
            await job.sleep(IDLE_SECONDS)
            if job.is_cancelled:
                return False
            self._pass()
        # Converge: what guests wrote until now reaches the target.
        if not await self._copy_dirty(job, copier):
            return False
        self._tracking = False
        return True

    async def run(self, job: Job) -> None:
        size = self.source.size
        if self.target.size != size:
            raise JobFailure("Source and target image have different sizes", errno_mod.EINVAL)
        copier = self.copier(job)

        def copied(ext: Extent) -> None:
            job.progress_update(ext.length)
            self._frontier = ext.end

        try:
            if self.copy_all:
                # QEMU's mirror yields while it scans the source, before it
                # knows its length: a hold at offset 0 stops it here (0 of 0).
                await job.hold_point("progress")
                job.progress_set_remaining(size)
                done = await copier.copy_all(0, size, copied)
                self._frontier = size
                if not done or not await self._copy_dirty(job, copier):
                    return
                if not await copier.flush():
                    return
            if not await self._in_sync(job, copier):
                return
            await copier.flush()
        finally:
            copier.close()
            self._source_drained = True
            job.request_pause()

    def _end_source_drain(self, job: Job) -> None:
        if self._source_drained:
            self._source_drained = False
            job.drop_pause()

    def prepare(self, job: Job) -> None:
        self._end_source_drain(job)

    def abort(self, job: Job) -> None:
        self._end_source_drain(job)


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


class Qcow2CreateDriver(JobDriver):
    """``create``: blockdev-create of a qcow2 image on a node. Progress goes 0/1 -> 1/1."""

    job_type = JobType.CREATE

    def __init__(
        self, graph: BlockGraph, file: str | dict[str, Any], options: Qcow2CreateOptions
    ) -> None:
        self.graph = graph
        self.file = file
        self.options = options

    async def run(self, job: Job) -> None:
        job.progress_set_remaining(1)
        try:
            if isinstance(self.file, str):
                await create_on(self.graph.lookup(self.file), self.options)
                self.graph.on_change(QCOW2_CREATE_SECTIONS)
            else:
                ref = self.graph.open_implicit(self.file)
                try:
                    await create_on(ref.node, self.options)
                    self.graph.on_change(QCOW2_CREATE_SECTIONS)
                finally:
                    ref.release()
        except QMPError as exc:
            raise JobFailure(exc.desc) from exc
        except OSError as exc:
            reason = os.strerror(exc.errno or 0)
            raise JobFailure(f"Could not write qcow2 header: {reason}") from exc
        finally:
            job.progress_update(1)
