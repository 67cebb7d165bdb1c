"""``stream``: copy what the layers between a base and the top hold into the
top, then make the base the top's backing node (QEMU's ``block-stream``).

The run walks the top in chunks of :data:`STREAM_CHUNK`: a range allocated
in the top is left alone; one allocated in an intermediate layer is read
through the chain and written into the top (zeros as write-zeroes, as
QEMU's copy-on-read does); the rest (only in the base, or nowhere) stays
where it is. Every chunk counts toward progress; only copied bytes count
toward the rate limit. In ``prepare`` the top's header names the new
backing file and the graph drops the streamed layers (they go away once
the job's references to them are released, unless the monitor owns them).

Must not import: sockets, JSON.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

from ..block import BlockGraph, BlockNode
from ..block.drivers.qcow2 import Qcow2Node
from ..clock import Clock
from ..jobs import Job, JobFailure, JobType
from .copy import Cancelled, Copier, IoError
from .drivers import BlockJobDriver
from .policy import OnError, error_action

_T = TypeVar("_T")

#: QEMU's STREAM_CHUNK: the largest range one step looks at.
STREAM_CHUNK = 512 * 1024
#: An unthrottled step copies consecutive chunks in one request up to this.
MERGE_LIMIT = 4 << 20


async def chunk_with_policy(
    job: Job,
    policy: OnError,
    attempt: Callable[[], Awaitable[_T]],
    *,
    ignore_skips: bool = True,
) -> _T | int:
    """One chunk of a stream or commit under its ``on-error`` policy, as
    QEMU's loops handle it: ``report`` fails the job now; ``stop`` parks the
    job and tries the chunk again after resume; ``ignore`` skips the chunk
    in a stream (returns its errno: the job fails with it at its end, and
    changes no backing file) and tries it again at once in a commit
    (``ignore_skips`` false).

    :raise OSError: the policy reported the error.
    :raise Cancelled: the job was cancelled while stopped.
    """
    while True:
        try:
            return await attempt()
        except IoError as err:
            action = error_action(policy, err.errno)
            job.report_io_error(err.operation, action, err.errno)
            if action == "report":
                raise OSError(err.errno, os.strerror(err.errno)) from None
            if action == "ignore":
                if ignore_skips:
                    return err.errno
                continue
            await job.pause_point()
            if job.is_cancelled:
                raise Cancelled from None


async def copy_in_chunks(
    job: Job,
    copier: Copier,
    size: int,
    chunk: int,
    step: Callable[[int, int], Awaitable[tuple[int, bool]]],
    *,
    policy: OnError,
    ignore_skips: bool = True,
) -> None:
    """The loop of a stream or commit: ``step(pos, want)`` looks at up to
    ``want`` bytes at ``pos`` (at most ``chunk``) and says how many it
    looked at and whether it copied them; rate limit, pause points, progress
    and the ``on-error`` policy (:func:`chunk_with_policy`) around it, then a
    flush. Returns early when the job is cancelled.

    :raise OSError: a reported error, or the first error ``ignore`` skipped.
    """
    job.progress_set_remaining(size)
    offset = 0
    failed = 0
    try:
        while offset < size:
            await copier.throttle()
            if job.is_cancelled:
                return
            pos, want = offset, min(chunk, size - offset)
            outcome = await chunk_with_policy(
                job,
                policy,
                functools.partial(step, pos, want),
                ignore_skips=ignore_skips,
            )
            if isinstance(outcome, int):
                failed = failed or outcome
                n, copied = want, False
            else:
                n, copied = outcome
            if copied:
                copier.limiter.account(n)
            job.progress_update(n)
            offset += n
        if failed:
            raise OSError(failed, os.strerror(failed))
        await copier.flush()
    except Cancelled:
        return
    finally:
        copier.close()


async def allocated_above(layers: list[BlockNode], offset: int, length: int) -> tuple[bool, int]:
    """QEMU's ``bdrv_is_allocated_above`` over ``layers`` (top first): whether
    the first ``run`` bytes at ``offset`` are allocated in any of them."""
    n = length
    for layer in layers:
        if offset >= layer.size:
            continue
        allocated, run = await layer.allocated(offset, min(n, layer.size - offset))
        if allocated:
            return True, run
        n = min(n, run)
    return False, n


class StreamDriver(BlockJobDriver):
    """``stream`` into ``target`` (the top) from ``layers`` (its backing
    chain down to the base's overlay) onto ``base`` (None: the whole chain)."""

    job_type = JobType.STREAM
    #: QEMU 10.0: freeing the job (its nodes' closes come on top).
    free_sections = 2
    #: The top was read-only before the job made it writable.
    top_read_only = False

    def finalize_sections(self, job: Job) -> int:
        # Relinking the top onto the base, dropping the copy-on-read filter;
        # one more giving the top back read-only.
        return 3 + (1 if self.top_read_only else 0)

    def __init__(
        self,
        graph: BlockGraph,
        top: Qcow2Node,
        layers: list[BlockNode],
        base: BlockNode | None,
        backing_file: str | None,
        *,
        clock: Clock,
        executor: Executor,
        on_error: OnError,
    ) -> None:
        super().__init__(
            top,
            top,
            clock=clock,
            executor=executor,
            on_source_error=on_error,
            on_target_error=on_error,
        )
        self.nodes = (top, *layers)
        self.graph = graph
        self.top = top
        self.layers = layers
        self.base = base
        self.backing_file = backing_file

    async def run(self, job: Job) -> None:
        if not self.layers:
            return  # nothing to stream
        copier = self.copier(job)
        await copy_in_chunks(
            job,
            copier,
            self.top.size,
            STREAM_CHUNK,
            lambda pos, want: self._step(copier, pos, want),
            policy=self.on_source_error,
        )

    async def _step(self, copier: Copier, pos: int, want: int) -> tuple[int, bool]:
        """One chunk: ``(bytes looked at, whether they were copied)``."""
        top = self.top
        own, n = await copier._guard("read", top.allocated(pos, want))
        if own:
            return n, False
        copy, n = await copier._guard("read", allocated_above(self.layers, pos, n))
        if copy:
            n += await self._more_to_copy(copier, pos + n)
            await self._populate(copier, pos, n)
        return n, copy

    async def _more_to_copy(self, copier: Copier, pos: int) -> int:
        """How many bytes from ``pos`` on are to be copied as well, up to
        :data:`MERGE_LIMIT` in all: an unthrottled job writes them in one
        request (fewer metadata syncs in the top; QEMU's cache orders them)."""
        if self.limiter.speed:
            return 0
        size, more = self.top.size, 0
        while more < MERGE_LIMIT - STREAM_CHUNK and pos + more < size:
            want = min(STREAM_CHUNK, size - pos - more)
            own, n = await copier._guard("read", self.top.allocated(pos + more, want))
            if own:
                break
            copy, n = await copier._guard("read", allocated_above(self.layers, pos + more, n))
            if not copy:
                break
            more += n
        return more

    async def _populate(self, copier: Copier, offset: int, length: int) -> None:
        """Copy-on-read of one range: read through the chain, write into the top."""
        data = await copier._guard("read", self.top.read(offset, length))
        if data.count(0) == len(data):
            await copier._guard("read", self.top.write_zeroes(offset, length))
        else:
            await copier._guard("read", self.top.write(offset, data))

    def prepare(self, job: Job) -> None:
        top = self.top
        if top.backing_node() is None:
            return
        base = self.base
        self.graph.set_child(top, "backing", base)
        top.backing_changed()
        try:
            top.change_backing_file(
                self.backing_file if base is not None else None,
                base.driver if base is not None else None,
            )
        except OSError as exc:
            raise JobFailure(exc.strerror or "Input/output error") from exc
