"""Block nodes and their drivers: ``null-co``/``null-aio``, ``file``, ``raw``, ``blkdebug``.

A node has a size (always a multiple of 512, like QEMU's sector-granular
length), children by role (``file`` for raw, ``image`` for blkdebug), and
async I/O methods. Blocking file I/O runs in the graph's thread pool, never
on the event loop thread. I/O failures raise :class:`OSError` with a real
errno; the caller (a job) decides what that means.

Nodes are built by :class:`~qmpjobd.block.graph.BlockGraph`, which owns
naming, ownership and reference counts.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..wire.qdict import qdict_order, qemu_order
from .blkdebug import Blkdebug
from .json_filename import json_filename

SECTOR = 512
_T = TypeVar("_T")
_ZERO_CHUNK = 1 << 20


def round_up(value: int, align: int = SECTOR) -> int:
    return -(-value // align) * align


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class JobBlocker:
    """A block job's hold on a node: ``blockdev-del`` answers "busy" until released."""

    __slots__ = ("_node", "job_type")

    def __init__(self, node: BlockNode, job_type: str) -> None:
        self._node: BlockNode | None = node
        self.job_type = job_type

    def release(self) -> None:
        """Drop the hold (idempotent)."""
        if self._node is not None:
            self._node._blockers.remove(self)
            self._node = None


class NodeReference:
    """A reference that keeps a node in use ("Block device %s is in use")."""

    __slots__ = ("_node", "_on_release")

    def __init__(self, node: BlockNode, on_release: Callable[[BlockNode], None]) -> None:
        self._node: BlockNode | None = node
        self._on_release = on_release

    @property
    def node(self) -> BlockNode:
        if self._node is None:
            raise RuntimeError("reference already released")
        return self._node

    def release(self) -> None:
        """Drop the reference (idempotent)."""
        if self._node is not None:
            node, self._node = self._node, None
            self._on_release(node)


class IOContext:
    """What nodes share: the executor that runs blocking calls."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))


class BlockNode:
    """One node of the block graph.

    Subclasses implement ``_length`` and the ``_read``/``_write``/... hooks;
    the public methods check the request first.
    """

    #: QEMU's format name (``drv`` and ``image.format`` in query output).
    driver: ClassVar[str] = ""

    def __init__(self, ctx: IOContext, node_name: str, options: dict[str, Any]) -> None:
        self._ctx = ctx
        self.node_name = node_name
        self.options = options
        self.read_only: bool = bool(options.get("read-only", False))
        self.detect_zeroes: str = str(options.get("detect-zeroes", "off"))
        cache = options.get("cache") or {}
        self.cache_direct = bool(cache.get("direct", False))
        self.cache_no_flush = bool(cache.get("no-flush", False))
        self.children: dict[str, BlockNode] = {}
        #: True for a node added by blockdev-add itself (not an implicit child).
        self.monitor_owned = False
        #: parents + monitor ownership + outside references
        self.refcnt = 0
        #: How many registered nodes of the graph have this one as a child.
        self.parent_count = 0
        self.closed = False
        self._blockers: list[JobBlocker] = []
        #: block backends attached to the node (a mirror's target): blockdev-del
        #: then answers "Node %s is in use"
        self.backends = 0
        self._order = 0  # position in the graph, set when the node gets its name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_name!r}>"

    # -- size -------------------------------------------------------------

    def _length(self) -> int:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Length in bytes, rounded up to a multiple of 512 (what QEMU reports)."""
        return round_up(self._length())

    # -- permissions ------------------------------------------------------

    def block_job(self, job_type: str) -> JobBlocker:
        """Mark the node as used by a block job of ``job_type`` until ``release()``."""
        blocker = JobBlocker(self, job_type)
        self._blockers.append(blocker)
        return blocker

    @property
    def busy_reason(self) -> str | None:
        """The job type holding the node (newest hold first), or None."""
        return self._blockers[-1].job_type if self._blockers else None

    # -- I/O --------------------------------------------------------------

    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise _os_error(errno_mod.EINVAL)
        if offset + length > self.size:
            raise _os_error(errno_mod.EIO)
        if self.closed:
            raise _os_error(errno_mod.ENOMEDIUM)

    def _check_write(self, offset: int, length: int) -> None:
        self._check_request(offset, length)
        if self.read_only:
            raise _os_error(errno_mod.EPERM)

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``.

        :raise OSError: the request is out of range or the I/O failed.
        """
        self._check_request(offset, length)
        return await self._read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``.

        :raise OSError: out of range, read-only node, or the I/O failed.
        """
        self._check_write(offset, len(data))
        self._debug_event("pwritev")
        try:
            await self._write(offset, data)
        finally:
            self._debug_event("pwritev_done")

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``length`` bytes at ``offset`` read as zeros.

        :raise OSError: out of range, read-only node, or the I/O failed.
        """
        self._check_write(offset, length)
        self._debug_event("pwritev_zero")
        try:
            await self._write_zeroes(offset, length)
        finally:
            self._debug_event("pwritev_done")

    async def flush(self) -> None:
        """Flush written data to stable storage (a no-op with ``cache.no-flush``).

        :raise OSError: the flush failed.
        """
        if self.closed:
            raise _os_error(errno_mod.ENOMEDIUM)
        await self._flush()

    async def block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        """``(has_data, run)``: what the first ``run`` bytes at ``offset`` hold.

        ``has_data`` is True for data, False for what reads as zeros (holes
        of sparse files, ``null-co`` with ``read-zeroes``), and None when the
        node says neither, like QEMU's ``null-co`` without ``read-zeroes``
        (a backup copies such blocks, a mirror discards them). ``run`` is at
        least 1 and at most ``length``.

        :raise OSError: out of range or the query failed.
        """
        if length <= 0:
            raise _os_error(errno_mod.EINVAL)
        self._check_request(offset, length)
        return await self._block_status(offset, length)

    def file_path(self) -> Path | None:
        """The file behind this node when its bytes are that file's bytes at offset 0."""
        return None

    async def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def _write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._write(offset, bytes(length))

    async def _flush(self) -> None:
        return None

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        return True, length

    def _debug_event(self, event: str) -> None:
        """A blkdebug event happened on this node (only blkdebug listens)."""
        return None

    def close(self) -> None:
        self.closed = True

    # -- query-named-block-nodes -----------------------------------------

    def _exact_filename(self) -> str | None:
        """A plain filename that describes the node fully, or None (then ``json:``)."""
        return None

    def _strong_options(self) -> dict[str, Any]:
        """The options that change what the node's data is (QEMU's "strong" options)."""
        return {}

    def full_open_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"driver": self.driver}
        opts.update(self._strong_options())
        for role, child in self.children.items():
            opts[role] = child.full_open_options()
        return opts

    @property
    def filename(self) -> str:
        exact = self._exact_filename()
        if exact is not None:
            return exact
        return json_filename(self.full_open_options())

    def _has_info(self) -> bool:
        """Whether QEMU's get_info succeeds (then ``dirty-flag`` is shown)."""
        return False

    def _actual_size(self) -> int | None:
        return None

    def _filtered_child(self) -> BlockNode | None:
        """The child a filter driver passes through (shown as ``backing-image``)."""
        return None

    def image_info(self) -> dict[str, Any]:
        """QEMU's ImageInfo of the node (members in QAPI order; see wire.qdict)."""
        info: dict[str, Any] = {"filename": self.filename, "format": self.driver}
        if self._has_info():
            info["dirty-flag"] = False
        actual = self._actual_size()
        if actual is not None:
            info["actual-size"] = actual
        info["virtual-size"] = self.size
        filtered = self._filtered_child()
        if filtered is not None:
            info["backing-image"] = filtered.image_info()
        return info

    def device_info(self) -> dict[str, Any]:
        """QEMU 7.2's BlockDeviceInfo for ``query-named-block-nodes``, in 7.2's member order."""
        depth = 0
        below = self._filtered_child()
        while below is not None:
            depth += 1
            below = below._filtered_child()
        info: dict[str, Any] = {
            "file": self.filename,
            "node-name": self.node_name,
            "ro": self.read_only,
            "drv": self.driver,
            "encrypted": False,
            "detect_zeroes": self.detect_zeroes,
            "bps": 0,
            "bps_rd": 0,
            "bps_wr": 0,
            "iops": 0,
            "iops_rd": 0,
            "iops_wr": 0,
            "image": self.image_info(),
            "backing_file_depth": depth,
            "cache": {
                "writeback": True,
                "direct": self.cache_direct,
                "no-flush": self.cache_no_flush,
            },
            "write_threshold": 0,
        }
        result: dict[str, Any] = qemu_order(info)
        return result


class NullNode(BlockNode):
    """``null-co``: a node of a given size that reads zeros and forgets writes."""

    driver = "null-co"
    DEFAULT_SIZE = 1 << 30

    def __init__(self, ctx: IOContext, node_name: str, options: dict[str, Any]) -> None:
        super().__init__(ctx, node_name, options)
        self._bytes = int(options.get("size", self.DEFAULT_SIZE))
        self.latency_ns = int(options.get("latency-ns", 0))
        self.read_zeroes = bool(options.get("read-zeroes", False))

    def _length(self) -> int:
        return self._bytes

    async def _delay(self) -> None:
        if self.latency_ns:
            await asyncio.sleep(self.latency_ns / 1e9)

    async def _read(self, offset: int, length: int) -> bytes:
        await self._delay()
        # Without read-zeroes QEMU leaves the buffer untouched; zeros are one such buffer.
        return bytes(length)

    async def _write(self, offset: int, data: bytes) -> None:
        await self._delay()

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._delay()

    async def _flush(self) -> None:
        await self._delay()

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        # With read-zeroes QEMU reports zeros; without, neither data nor zeros.
        return (False if self.read_zeroes else None), length

    def _strong_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in ("size", "read-zeroes") if k in self.options}

    def _exact_filename(self) -> str | None:
        if any(k in self.options for k in ("size", "read-zeroes")):
            return None
        return f"{self.driver}://"

    def _actual_size(self) -> int | None:
        return 0


class NullAioNode(NullNode):
    driver = "null-aio"


class FileNode(BlockNode):
    """``file``: a regular file on the host, read and written with pread/pwrite."""

    driver = "file"

    def __init__(self, ctx: IOContext, node_name: str, options: dict[str, Any], fd: int) -> None:
        super().__init__(ctx, node_name, options)
        self.path = str(options["filename"])
        self._fd = fd
        # Like QEMU, the length is read once, at open: a file that shrinks
        # or grows behind the node's back keeps its length here, and what
        # lies past the file's real end reads as zeros.
        self._size = os.fstat(fd).st_size

    def _length(self) -> int:
        if self.closed:
            return 0
        return self._size

    def file_path(self) -> Path | None:
        return Path(self.path)

    def _pread(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(self._fd, length - done, offset + done)
            if not chunk:
                break  # end of file: the rest of the last sector reads as zeros
            parts.append(chunk)
            done += len(chunk)
        if done < length:
            parts.append(bytes(length - done))
        return b"".join(parts)

    def _pwrite(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def _zero(self, offset: int, length: int) -> None:
        end = offset + length
        if offset >= os.fstat(self._fd).st_size:
            # Past the end: growing the file leaves a hole, which reads as zeros.
            if end > os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, end)
            return
        zeros = bytes(min(length, _ZERO_CHUNK))
        pos = offset
        while pos < end:
            n = min(len(zeros), end - pos)
            self._pwrite(pos, zeros[:n])
            pos += n

    def _status(self, offset: int, length: int) -> tuple[bool, int]:
        eof = os.fstat(self._fd).st_size
        if offset >= eof:
            return False, length
        try:
            data = os.lseek(self._fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno_mod.ENXIO:
                return False, length  # only a hole up to the end of the file
            if exc.errno in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP):
                return True, length  # no hole detection here: everything is data
            raise
        if data > offset:
            return False, min(length, data - offset)
        hole = os.lseek(self._fd, offset, os.SEEK_HOLE)
        return True, max(1, min(length, hole - offset))

    async def _read(self, offset: int, length: int) -> bytes:
        return await self._ctx.run(self._pread, offset, length)

    async def _write(self, offset: int, data: bytes) -> None:
        await self._ctx.run(self._pwrite, offset, data)

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._ctx.run(self._zero, offset, length)

    async def _flush(self) -> None:
        if not self.cache_no_flush:
            await self._ctx.run(os.fdatasync, self._fd)

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        return await self._ctx.run(self._status, offset, length)

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.close(self._fd)

    def _strong_options(self) -> dict[str, Any]:
        return {"filename": self.path}

    def _exact_filename(self) -> str | None:
        return self.path

    def _has_info(self) -> bool:
        return True

    def _actual_size(self) -> int | None:
        if self.closed:
            return 0
        return os.fstat(self._fd).st_blocks * 512

    @staticmethod
    def open_fd(path: str, read_only: bool, direct: bool) -> int:
        """Open ``path`` like QEMU's file driver would.

        :raise OSError: the file cannot be opened.
        """
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if direct:
            # Only to answer like QEMU where O_DIRECT is refused; I/O stays buffered.
            os.close(os.open(path, flags | getattr(os, "O_DIRECT", 0)))
        return os.open(path, flags)


class RawNode(BlockNode):
    """``raw``: a window (``offset``, ``size``) onto its ``file`` child."""

    driver = "raw"

    def __init__(
        self, ctx: IOContext, node_name: str, options: dict[str, Any], child: BlockNode
    ) -> None:
        super().__init__(ctx, node_name, options)
        self.children["file"] = child
        self.offset = int(options.get("offset", 0))
        self._fixed_size: int | None = int(options["size"]) if "size" in options else None

    @property
    def file(self) -> BlockNode:
        return self.children["file"]

    def _length(self) -> int:
        if self._fixed_size is not None:
            return self._fixed_size
        return max(0, self.file.size - self.offset)

    def _clamp(self, offset: int, length: int) -> int:
        # The rounded-up tail of an unaligned window may pass the child's end.
        return max(0, min(length, self.file.size - (self.offset + offset)))

    async def _read(self, offset: int, length: int) -> bytes:
        self.file._debug_event("read_aio")
        n = self._clamp(offset, length)
        data = await self.file.read(self.offset + offset, n) if n else b""
        return data + bytes(length - n)

    async def _write(self, offset: int, data: bytes) -> None:
        self.file._debug_event("write_aio")
        await self.file.write(self.offset + offset, data)

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self.file.write_zeroes(self.offset + offset, length)

    async def _flush(self) -> None:
        self.file._debug_event("flush_to_os")
        self.file._debug_event("flush_to_disk")
        await self.file.flush()

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        n = self._clamp(offset, length)
        if n == 0:
            return False, length
        return await self.file.block_status(self.offset + offset, n)

    def file_path(self) -> Path | None:
        if self.offset != 0:
            return None
        return self.file.file_path()

    def _strong_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in ("offset", "size") if k in self.options}

    def _exact_filename(self) -> str | None:
        if self._strong_options():
            return None
        return self.file._exact_filename()

    def _has_info(self) -> bool:
        return self.file._has_info()

    def _actual_size(self) -> int | None:
        return self.file._actual_size()


_BLKDEBUG_LIMITS = (
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
)
_INJECT_MEMBERS = ("event", "state", "iotype", "errno", "sector", "once", "immediately")
BLKDEBUG_SIZE_OPTIONS = ("align", *_BLKDEBUG_LIMITS)


class BlkdebugNode(BlockNode):
    """``blkdebug``: passes I/O to its ``image`` child, failing it by rule."""

    driver = "blkdebug"

    def __init__(
        self, ctx: IOContext, node_name: str, options: dict[str, Any], child: BlockNode
    ) -> None:
        super().__init__(ctx, node_name, options)
        self.children["image"] = child
        self.config: str | None = options.get("config")
        self.rules = Blkdebug.from_options(
            options.get("inject-error", ()), options.get("set-state", ())
        )

    @property
    def image(self) -> BlockNode:
        return self.children["image"]

    def _length(self) -> int:
        return self.image.size

    def _debug_event(self, event: str) -> None:
        self.rules.fire(event)

    async def _check(self, offset: int, length: int, iotype: str) -> None:
        code, immediately = self.rules.check(offset, length, iotype)
        if code:
            if not immediately:
                await asyncio.sleep(0)
            raise _os_error(code)

    async def _read(self, offset: int, length: int) -> bytes:
        await self._check(offset, length, "read")
        return await self.image.read(offset, length)

    async def _write(self, offset: int, data: bytes) -> None:
        await self._check(offset, len(data), "write")
        await self.image.write(offset, data)

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._check(offset, length, "write-zeroes")
        await self.image.write_zeroes(offset, length)

    async def _flush(self) -> None:
        await self._check(0, 0, "flush")
        await self.image.flush()

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        await self._check(offset, length, "block-status")
        return await self.image.block_status(offset, length)

    def _strong_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.config is not None:
            opts["config"] = self.config
        for key in BLKDEBUG_SIZE_OPTIONS:
            if key in self.options:
                opts[key] = self.options[key]
        # QEMU keeps list options flattened ("inject-error.0.event"), members
        # in QAPI order, and copies them into the node's full options by
        # iterating that QDict: they arrive in its order, which decides how
        # keys sharing a bucket print (all inject-error.N.event/errno do).
        flat: dict[str, Any] = {}
        for key, members in (
            ("inject-error", _INJECT_MEMBERS),
            ("set-state", ("event", "state", "new_state")),
        ):
            for i, item in enumerate(self.options.get(key, ())):
                for member in members:
                    if member in item:
                        flat[f"{key}.{i}.{member}"] = item[member]
        for key in qdict_order(flat):
            opts[key] = flat[key]
        return opts

    def _exact_filename(self) -> str | None:
        below = self.image._exact_filename()
        if below is None:
            return None
        if any(k != "config" for k in self._strong_options()):
            return None
        return f"blkdebug:{self.config or ''}:{below}"

    def _has_info(self) -> bool:
        return self.image._has_info()

    def _filtered_child(self) -> BlockNode | None:
        return self.image
