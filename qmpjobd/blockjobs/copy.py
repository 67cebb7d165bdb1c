"""The copy engine shared by backup and mirror.

A :class:`Copier` moves a range of a source node to the same offsets of a
target node, one chunk at a time, between pause points:

* holes of the source (``block_status``) are not read: nothing is written
  for them when the target is known to read zeros, ``write_zeroes``
  otherwise;
* when both nodes are plain files, data moves with ``os.copy_file_range``
  in the graph's worker threads; otherwise through the nodes' read/write;
* every failed request goes through the job's error policy: ``report``
  fails the job with the errno's text, ``stop`` parks the job and retries
  the same request after resume, ``ignore`` retries at once;
* the rate limiter is consulted before every chunk, so a new speed applies
  from the next chunk on.

Must not import: sockets, JSON.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from ..block import BlockNode
from ..jobs import IoOperation, Job
from .policy import OnError, error_action
from .ratelimit import SLICE_SECONDS, RateLimiter

#: QEMU's default cluster size for backup: progress moves in these units.
CLUSTER = 64 * 1024
#: Largest chunk moved in one step when no rate limit is set.
MAX_CHUNK = 4 << 20
_FALLBACK_ERRNOS = frozenset(
    {errno_mod.EXDEV, errno_mod.ENOSYS, errno_mod.EINVAL, errno_mod.EOPNOTSUPP, errno_mod.EBADF}
)
_T = TypeVar("_T")


class Cancelled(Exception):
    """The job was force-cancelled while a request was being retried."""


@dataclass
class Extent:
    """A run of the source: ``[offset, end)`` holds data or reads as zeros."""

    offset: int
    end: int
    data: bool
    #: Neither data nor zeros (QEMU's null-co): nothing to write at all.
    discard: bool = False

    @property
    def length(self) -> int:
        return self.end - self.offset


def round_up(value: int, align: int) -> int:
    return -(-value // align) * align


class _FileRange:
    """Both ends as plain files: their own descriptors for ``copy_file_range``."""

    def __init__(self, src_path: str, dst_path: str) -> None:
        self.src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.dst = os.open(dst_path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.src)
            raise

    def copy(self, offset: int, length: int) -> None:
        """Copy ``[offset, offset+length)``; bytes past the source's end are zeros."""
        pos = offset
        end = offset + length
        while pos < end:
            try:
                n = os.copy_file_range(self.src, self.dst, end - pos, pos, pos)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                n = self._copy_buffered(pos, end - pos)
            if n == 0:
                # Past the end of the source file: its node reads zeros there.
                zeros = bytes(end - pos)
                done = 0
                while done < len(zeros):
                    done += os.pwrite(self.dst, zeros[done:], pos + done)
                return
            pos += n

    def _copy_buffered(self, offset: int, length: int) -> int:
        """Where the kernel cannot copy between these files: read, then write."""
        data = os.pread(self.src, min(length, MAX_CHUNK), offset)
        done = 0
        while done < len(data):
            done += os.pwrite(self.dst, data[done:], offset + done)
        return len(data)

    def close(self) -> None:
        os.close(self.src)
        os.close(self.dst)


class _IoError(Exception):
    def __init__(self, operation: IoOperation, exc: OSError) -> None:
        super().__init__(exc)
        self.operation = operation
        self.errno = exc.errno or errno_mod.EIO


class Copier:
    """Copies ranges of ``source`` to ``target`` for ``job`` (see the module doc).

    :param zero_target: the target is known to read zeros where nothing was
        written, so holes need no write.
    """

    def __init__(
        self,
        job: Job,
        source: BlockNode,
        target: BlockNode,
        *,
        executor: Executor,
        limiter: RateLimiter,
        on_source_error: OnError,
        on_target_error: OnError,
        zero_target: bool = False,
        retry_stopped_on_cancel: bool = False,
        copy_unknown: bool = True,
    ) -> None:
        self.job = job
        self.copy_unknown = copy_unknown
        self.retry_stopped_on_cancel = retry_stopped_on_cancel
        self.source = source
        self.target = target
        self.executor = executor
        self.limiter = limiter
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.zero_target = zero_target
        self._files: _FileRange | None = None
        self._fast_tried = False

    # ------------------------------------------------------------- helpers

    @property
    def chunk(self) -> int:
        """Bytes per step: at most one time slice's quota (whole clusters,
        at least one) while rate limited, else a larger chunk."""
        speed = self.limiter.speed
        if not speed:
            return MAX_CHUNK
        quota = int(speed * SLICE_SECONDS) // CLUSTER * CLUSTER
        return min(MAX_CHUNK, max(CLUSTER, quota))

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def _open_fast_path(self) -> None:
        self._fast_tried = True
        src = self.source.file_path()
        dst = self.target.file_path()
        if src is None or dst is None or self.target.read_only:
            return
        try:
            self._files = await self._run(_FileRange, str(src), str(dst))
        except OSError:
            self._files = None

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None

    async def _guard(self, operation: IoOperation, request: Awaitable[_T]) -> _T:
        try:
            return await request
        except OSError as exc:
            raise _IoError(operation, exc) from exc

    async def with_policy(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` until it succeeds, applying the error policies.

        :raise OSError: the policy reported the error (the job fails).
        :raise Cancelled: the job was force-cancelled while stopped.
        """
        retried_cancelled = False
        while True:
            try:
                return await attempt()
            except _IoError as err:
                if retried_cancelled:
                    # The last try of a cancelled job: its failure is not reported.
                    raise Cancelled from None
                policy = self.on_source_error if err.operation == "read" else self.on_target_error
                action = error_action(policy, err.errno)
                self.job.report_io_error(err.operation, action, err.errno)
                if action == "report":
                    raise OSError(err.errno, os.strerror(err.errno)) from None
                await self.job.pause_point()
                if self.job.is_cancelled:
                    if not self.retry_stopped_on_cancel or retried_cancelled:
                        raise Cancelled from None
                    retried_cancelled = True

    async def throttle(self) -> None:
        """The rate-limit wait before a chunk; also a pause point."""
        while True:
            # A step (an extension) copies its bytes at once, whatever the limit.
            delay = 0.0 if self.job.stepping else self.limiter.delay()
            if delay <= 0:
                await self.job.pause_point()
                return
            await self.job.sleep(delay)
            if self.job.is_cancelled:
                return

    # ---------------------------------------------------------------- steps

    async def extent(self, offset: int, limit: int) -> Extent:
        """The source's run at ``offset`` (at most ``limit`` bytes), cluster aligned.

        A hole shorter than a cluster counts as data; data is extended to
        the end of its cluster.
        """
        size = self.source.size
        status, run = await self.with_policy(
            lambda: self._guard("read", self.source.block_status(offset, limit))
        )
        if status is None and not self.copy_unknown:
            # QEMU's mirror discards what is neither data nor zeros.
            return Extent(offset, offset + run, False, discard=True)
        data = True if status is None else status
        end = offset + run
        if end < size:
            if data:
                end = min(round_up(end, CLUSTER), size)
            else:
                end = end // CLUSTER * CLUSTER
                if end <= offset:
                    data = True
                    end = min(offset + CLUSTER, size)
        return Extent(offset, end, data)

    async def copy(self, ext: Extent) -> None:
        """Copy one extent (policies applied)."""
        if ext.discard:
            self.limiter.account(ext.length)
            return
        if not ext.data:
            if not self.zero_target:
                await self.with_policy(
                    lambda: self._guard("write", self.target.write_zeroes(ext.offset, ext.length))
                )
            self.limiter.account(ext.length)
            return
        if not self._fast_tried:
            await self._open_fast_path()
        files = self._files
        if files is not None and not (self.source.faulty or self.target.faulty):
            await self.with_policy(
                lambda: self._guard("write", self._run(files.copy, ext.offset, ext.length))
            )
        else:
            await self.with_policy(lambda: self._copy_slow(ext))
        self.limiter.account(ext.length)

    async def _copy_slow(self, ext: Extent) -> None:
        data = await self._guard("read", self.source.read(ext.offset, ext.length))
        await self._guard("write", self.target.write(ext.offset, data))

    async def flush(self) -> bool:
        """Flush the target (policies applied); ``False`` when cancelled."""
        try:
            await self.with_policy(lambda: self._guard("write", self.target.flush()))
        except Cancelled:
            return False
        return True

    async def copy_all(self, start: int, end: int, on_progress: Callable[[Extent], None]) -> bool:
        """Copy ``[start, end)`` chunk by chunk; ``False`` when cancelled."""
        pos = start
        while pos < end:
            await self.job.hold_point("progress")
            await self.throttle()
            if self.job.is_cancelled:
                return False
            limit = min(self.chunk, end - pos)
            # An extension's hold at a progress offset: stop the chunk there.
            stop = self.job.progress_limit()
            if stop is not None and stop > 0:
                limit = min(limit, stop)
            try:
                ext = await self.extent(pos, limit)
                await self.copy(ext)
            except Cancelled:
                return False
            on_progress(ext)
            pos = ext.end
        return True
