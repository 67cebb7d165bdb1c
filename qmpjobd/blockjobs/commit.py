"""``commit``: move what the layers from ``top`` down to the base's overlay
hold into the base (QEMU's ``block-commit``).

* Intermediate commit (``top`` below the active layer): chunks of
  :data:`COMMIT_BUFFER_SIZE` allocated above the base are read through the
  chain and written into the base; in ``prepare`` the overlay of ``top``
  gets the base as its backing node and names it in its header, and the
  committed layers leave the graph (once the job lets go of them).
* Active commit (``top`` is the device itself): a mirror of the ranges
  allocated above the base onto the base; READY once copied;
  ``job-complete`` or a soft ``block-job-cancel`` in READY end it. As in
  qemu-storage-daemon, where no device sits on top of the chain, the graph
  stays as it is.

A read-only base is reopened read-write for the job (QEMU does the same).

Must not import: sockets, JSON.
"""

from __future__ import annotations

from concurrent.futures import Executor

from ..block import BlockGraph, BlockNode
from ..block.drivers.qcow2 import Qcow2Node
from ..clock import Clock
from ..jobs import Job, JobFailure, JobType
from .copy import Cancelled, Copier
from .drivers import BlockJobDriver, MirrorDriver
from .policy import OnError
from .stream import MERGE_LIMIT, allocated_above, copy_in_chunks

#: QEMU's COMMIT_BUFFER_SIZE: the largest range one step looks at.
COMMIT_BUFFER_SIZE = 512 * 1024


async def _copy_range(
    copier: Copier, source: BlockNode, base: BlockNode, offset: int, n: int
) -> None:
    data = await copier._guard("read", source.read(offset, n))
    await copier._guard("write", base.write(offset, data))


class CommitDriver(BlockJobDriver):
    """Intermediate commit of ``layers`` (``top`` first) into ``base``, under ``overlay``."""

    job_type = JobType.COMMIT
    #: QEMU 10.0: dropping the commit filter and the job's nodes.
    free_sections = 1

    def finalize_sections(self, job: Job) -> int:
        # Relinking the chain, the filter; one more giving the base back read-only.
        return 4 + (1 if self.base_read_only else 0)

    def __init__(
        self,
        graph: BlockGraph,
        overlay: Qcow2Node,
        layers: list[BlockNode],
        base: BlockNode,
        backing_file: str | None,
        *,
        clock: Clock,
        executor: Executor,
        on_error: OnError,
    ) -> None:
        super().__init__(
            layers[0],
            base,
            clock=clock,
            executor=executor,
            on_source_error=on_error,
            on_target_error=on_error,
        )
        self.nodes = (overlay, *layers, base)
        self.graph = graph
        self.overlay = overlay
        self.layers = layers
        self.base = base
        self.backing_file = backing_file
        #: the base was read-only before the job made it writable
        self.base_read_only = False

    def clean(self, job: Job) -> None:
        super().clean(job)
        if self.base_read_only:
            self.base.reopen_read_only()

    async def run(self, job: Job) -> None:
        copier = self.copier(job)
        await copy_in_chunks(
            job,
            copier,
            self.layers[0].size,
            COMMIT_BUFFER_SIZE,
            lambda pos, want: self._step(copier, pos, want),
            policy=self.on_source_error,
            ignore_skips=False,  # a commit tries a failed chunk again at once
        )

    async def _step(self, copier: Copier, pos: int, want: int) -> tuple[int, bool]:
        """One chunk: ``(bytes looked at, whether they were copied)``."""
        copy, n = await copier._guard("read", allocated_above(self.layers, pos, want))
        if copy and not self.limiter.speed:
            size = self.layers[0].size
            while n < MERGE_LIMIT and pos + n < size:
                more, m = await copier._guard(
                    "read",
                    allocated_above(self.layers, pos + n, min(COMMIT_BUFFER_SIZE, size - pos - n)),
                )
                if not more:
                    break
                n += m
        if copy:
            await _copy_range(copier, self.layers[0], self.base, pos, n)
        return n, copy

    def prepare(self, job: Job) -> None:
        overlay, base = self.overlay, self.base
        self.graph.set_child(overlay, "backing", base)
        overlay.backing_changed()
        try:
            overlay.change_backing_file(self.backing_file or base.filename, base.driver)
        except OSError as exc:
            raise JobFailure(exc.strerror or "Input/output error") from exc


class LayersMirrorDriver(MirrorDriver):
    """A mirror of what ``layers`` (the source first, then its backing chain
    down to the mirror's base) hold, onto ``target``: QEMU's mirror marks
    only those ranges dirty when the target needs nothing else (``sync:
    top``, a new image, an active commit). Progress counts those bytes."""

    def __init__(
        self,
        layers: list[BlockNode],
        target: BlockNode,
        *,
        clock: Clock,
        executor: Executor,
        on_source_error: OnError,
        on_target_error: OnError,
        zero_target: bool = False,
        copy_mode: str = "background",
    ) -> None:
        super().__init__(
            layers[0],
            target,
            clock=clock,
            executor=executor,
            on_source_error=on_source_error,
            on_target_error=on_target_error,
            zero_target=zero_target,
            copy_all=True,
            copy_mode=copy_mode,
        )
        self.layers = layers

    async def run(self, job: Job) -> None:
        size = self.source.size
        await job.hold_point("progress")
        ranges: list[tuple[int, int]] = []
        offset = 0
        while offset < size:
            copy, n = await allocated_above(self.layers, offset, size - offset)
            if copy:
                ranges.append((offset, n))
            offset += n
        job.progress_set_remaining(sum(n for _, n in ranges))
        # The ranges are not copied in one sweep: every guest write is tracked.
        self._frontier = size
        copier = self.copier(job)
        try:
            for start, length in ranges:
                end = start + length
                done = await copier.copy_all(
                    start,
                    end,
                    lambda e: job.progress_update(min(e.end, end) - e.offset),  # noqa: B023
                )
                if not done:
                    return
            if not await self._copy_dirty(job, copier) or not await copier.flush():
                return
            if not await self._in_sync(job, copier):
                return
            await copier.flush()
        except Cancelled:
            return
        finally:
            copier.close()


class ActiveCommitDriver(LayersMirrorDriver):
    """Active commit: ``layers[0]`` (the active layer) onto the base."""

    job_type = JobType.COMMIT

    def __init__(
        self,
        layers: list[BlockNode],
        base: BlockNode,
        *,
        clock: Clock,
        executor: Executor,
        on_error: OnError,
    ) -> None:
        super().__init__(
            layers,
            base,
            clock=clock,
            executor=executor,
            on_source_error=on_error,
            on_target_error=on_error,
        )
        self.nodes = (*layers, base)
