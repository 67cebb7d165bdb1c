"""The copy engine shared by backup and mirror.

A :class:`Copier` moves a range of a source node to the same offsets of a
target node, one chunk at a time, between pause points:

* holes of the source (``block_status``) are not read: nothing is written
  for them when the target is known to read zeros, ``write_zeroes``
  otherwise;
* when both nodes are plain files, data moves with ``os.copy_file_range``
  in the graph's worker threads; otherwise through the nodes' read/write;
* when the target is a plain file, write-back of every written range starts
  at once (``sync_file_range``), and an unthrottled copy waits for ranges
  more than :data:`WRITEBACK_WINDOW` behind, so dirty pages never pile up
  and the flush that ends the copy is short (see :class:`WriteBack`); an
  unthrottled copy between files also asks for the source's next
  :data:`READAHEAD` bytes ahead, so reading does not stop while it waits;
* every failed request goes through the job's error policy: ``report``
  fails the job with the errno's text, ``stop`` parks the job and retries
  the same request after resume, ``ignore`` retries at once;
* the rate limiter is consulted before every chunk, so a new speed applies
  from the next chunk on.

Must not import: sockets, JSON.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno as errno_mod
import functools
import os
import sys
from collections import deque
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

#: How far write-back may lag behind an unthrottled copy: older ranges are
#: waited for before the copy goes on.
WRITEBACK_WINDOW = 32 << 20
#: How far ahead of an unthrottled copy between files the source is read
#: (``POSIX_FADV_WILLNEED``), so reads go on while write-back is waited for.
READAHEAD = 16 << 20
# Linux's values (the os module has neither the call nor its flags).
_SYNC_WAIT_BEFORE = 1
_SYNC_WRITE = 2
_SYNC_WAIT_AFTER = 4
#: Start write-back of a range; do not wait.
WRITEBACK_START = _SYNC_WRITE
#: Write a range back and wait until it is on the device.
WRITEBACK_WAIT = _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER
#: sync_file_range does not work here: write-back is left to the final flush.
_WRITEBACK_UNSUPPORTED = frozenset(
    {errno_mod.ENOSYS, errno_mod.EINVAL, errno_mod.EOPNOTSUPP, errno_mod.ESPIPE}
)


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


def _libc_sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """Linux's ``sync_file_range(2)`` through the C library (Python's os module
    does not offer it), raising :class:`OSError`; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
        # A foreign call: the GIL is released while the kernel works.
        if call(fd, offset, length, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return sync_file_range


class WriteBack:
    """Starts write-back of the ranges written to a file, bounding the lag.

    :meth:`written` runs in a worker thread after each written range: it
    starts write-back of that range and, when ``bounded``, waits for the
    ranges more than ``window`` bytes behind. Where ``sync_file_range`` is
    missing or refused (``ENOSYS``, ``EINVAL``...), it turns itself off
    and the final flush does all the work, as before. Other errors are the
    target's write errors.
    """

    #: The system call, ``(fd, offset, length, flags)``; None where missing.
    #: A seam: tests replace it to watch the calls.
    sync_file_range: Callable[[int, int, int, int], None] | None = _libc_sync_file_range()

    def __init__(self, fd: int, window: int | None = None) -> None:
        self.fd = fd
        self.window = WRITEBACK_WINDOW if window is None else window
        self.enabled = type(self).sync_file_range is not None
        self._started: deque[tuple[int, int]] = deque()
        self._started_bytes = 0

    def written(self, offset: int, length: int, bounded: bool = True) -> None:
        """``[offset, offset+length)`` was written: start its write-back and,
        when ``bounded``, wait for the ranges more than a window behind."""
        if length <= 0 or not self._call(offset, length, WRITEBACK_START):
            return
        self._started.append((offset, length))
        self._started_bytes += length
        while self._started_bytes > self.window and self.enabled:
            old, n = self._started.popleft()
            self._started_bytes -= n
            if bounded:
                self._call(old, n, WRITEBACK_WAIT)

    def _call(self, offset: int, length: int, flags: int) -> bool:
        fn = type(self).sync_file_range
        if not self.enabled or fn is None:
            return False
        try:
            fn(self.fd, offset, length, flags)
        except OSError as exc:
            if exc.errno not in _WRITEBACK_UNSUPPORTED:
                raise
            self.enabled = False
            self._started.clear()
            self._started_bytes = 0
            return False
        return True


class _FileRange:
    """Plain files: the target's own descriptor, for write-back, and the
    source's, for ``copy_file_range`` (None when the source is no file)."""

    def __init__(self, src_path: str | None, dst_path: str) -> None:
        self.dst = os.open(dst_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.src = None if src_path is None else os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.dst)
            raise
        self.writeback = WriteBack(self.dst)
        #: Where the source has been asked for up to (``POSIX_FADV_WILLNEED``).
        self._ahead = 0

    def copy(self, offset: int, length: int, bounded: bool = True) -> None:
        """Copy ``[offset, offset+length)``, then start its write-back; bytes
        past the source's end are zeros. ``bounded``: not rate limited, so
        read ahead and bound the write-back lag."""
        if bounded:
            self._read_ahead(offset + length)
        self._copy(offset, length)
        self.writeback.written(offset, length, bounded)

    def _read_ahead(self, start: int) -> None:
        """Ask for ``[start, start+READAHEAD)`` of the source (what was not
        asked for yet): the kernel reads it while this thread copies and waits."""
        end = start + READAHEAD
        start = max(start, self._ahead)
        if self.src is None or start >= end or not hasattr(os, "posix_fadvise"):
            return
        try:
            os.posix_fadvise(self.src, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            return  # only advice
        self._ahead = end

    def _copy(self, offset: int, length: int) -> None:
        assert self.src is not None
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
        assert self.src is not None
        data = os.pread(self.src, min(length, MAX_CHUNK), offset)
        done = 0
        while done < len(data):
            done += os.pwrite(self.dst, data[done:], offset + done)
        return len(data)

    def close(self) -> None:
        if self.src is not None:
            os.close(self.src)
        os.close(self.dst)


class IoError(Exception):
    """A failed request of a copy, with the operation it failed in."""

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
        cluster: int = CLUSTER,
    ) -> None:
        self.job = job
        #: the copy's granularity: extents are aligned to it
        self.cluster = cluster
        #: called after each extent is copied, before its progress counts
        self.after_copy: Callable[[Extent], Awaitable[None]] | None = None
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
        self._files_tried = False

    # ------------------------------------------------------------- helpers

    @property
    def chunk(self) -> int:
        """Bytes per step: at most one time slice's quota (whole clusters,
        at least one) while rate limited, else a larger chunk."""
        speed = self.limiter.speed
        if not speed:
            return max(MAX_CHUNK // self.cluster * self.cluster, self.cluster)
        cluster = self.cluster
        return max(cluster, min(MAX_CHUNK, int(speed * SLICE_SECONDS)) // cluster * cluster)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def _open_files(self) -> None:
        """Open the target file (and the source file, for the fast path)
        when the target's bytes are a plain file's."""
        self._files_tried = True
        dst = self.target.file_path()
        if dst is None or self.target.read_only:
            return
        src = self.source.file_path()
        try:
            files = await self._run(_FileRange, None if src is None else str(src), str(dst))
        except OSError:
            return
        if self.target.cache_no_flush:
            # No flush ends the copy: nothing to hurry to the device.
            files.writeback.enabled = False
        self._files = files

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None

    async def _guard(self, operation: IoOperation, request: Awaitable[_T]) -> _T:
        try:
            return await request
        except OSError as exc:
            raise IoError(operation, exc) from exc

    async def with_policy(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` until it succeeds, applying the error policies.

        :raise OSError: the policy reported the error (the job fails).
        :raise Cancelled: the job was force-cancelled while stopped.
        """
        retried_cancelled = False
        while True:
            try:
                return await attempt()
            except IoError as err:
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
        cluster = self.cluster
        if end < size:
            if data:
                end = min(round_up(end, cluster), size)
            else:
                end = end // cluster * cluster
                if end <= offset:
                    data = True
                    end = min(offset + cluster, size)
        return Extent(offset, end, data)

    async def copy(self, ext: Extent) -> None:
        """Copy one extent (policies applied)."""
        if ext.discard:
            self.limiter.account(ext.length)
            return
        if not self._files_tried:
            await self._open_files()
        if not ext.data:
            if not self.zero_target:
                await self.with_policy(lambda: self._write_zeroes(ext))
            self.limiter.account(ext.length)
            return
        files = self._files
        # Injected faults (an extension) are checked on the nodes' own path.
        faulty = self.source.faulty or self.target.faulty
        if files is not None and files.src is not None and not faulty:
            bounded = not self.limiter.speed
            await self.with_policy(
                lambda: self._guard("write", self._run(files.copy, ext.offset, ext.length, bounded))
            )
        else:
            await self.with_policy(lambda: self._copy_slow(ext))
        self.limiter.account(ext.length)

    async def _written(self, ext: Extent) -> None:
        """Start write-back of what was just written to the target file
        (bounded unless the copy is rate limited: that must not slow it)."""
        files = self._files
        if files is not None and files.writeback.enabled:
            bounded = not self.limiter.speed
            await self._guard(
                "write", self._run(files.writeback.written, ext.offset, ext.length, bounded)
            )

    async def _write_zeroes(self, ext: Extent) -> None:
        await self._guard("write", self.target.write_zeroes(ext.offset, ext.length))
        await self._written(ext)

    async def _copy_slow(self, ext: Extent) -> None:
        # In pieces: an extent of large clusters must not be read all at once.
        pos = ext.offset
        while pos < ext.end:
            n = min(MAX_CHUNK, ext.end - pos)
            data = await self._guard("read", self.source.read(pos, n))
            await self._guard("write", self.target.write(pos, data))
            pos += n
        await self._written(ext)

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
            if self.after_copy is not None:
                await self.after_copy(ext)
            on_progress(ext)
            pos = ext.end
        return True
