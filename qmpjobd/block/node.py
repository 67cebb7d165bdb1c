"""The block node base class and the interface every driver implements.

A node has a size (always a multiple of 512, like QEMU's sector-granular
length), children by role (``file`` for raw, ``image`` for blkdebug), and
async I/O methods whose public entry points check each request before the
driver sees it. Blocking file I/O runs in the graph's thread pool, never on
the event loop thread. I/O failures raise :class:`OSError` with a real
errno; the caller (a job) decides what that means.

A driver is a :class:`BlockNode` subclass in its own module of
``block/drivers/``, registered there by its ``driver`` name. It provides:

* ``open(opening)`` (a classmethod): its option checks, in QEMU's order and
  with its texts, interleaved with the two steps the graph performs for it,
  ``opening.name()`` (the node gets its name, the checks common to every
  driver run) and ``opening.child(role)`` (a child is looked up by name or
  opened from nested options);
* the I/O hooks ``_read``, ``_write``, ``_write_zeroes``, ``_flush``,
  ``_block_status`` and ``_length``, and ``file_path``/``host_fd`` when
  the node's bytes are a host file's;
* the info hooks ``strong_options``, ``exact_filename``, ``has_info``,
  ``actual_size``, ``filter_or_cow_child``, ``gather_child_options`` and
  ``image_info_members``, from which :mod:`qmpjobd.block.info` renders
  ``query-named-block-nodes``.

Nodes are opened by :class:`~qmpjobd.block.graph.BlockGraph`, which owns
naming, references, permissions and the undo of a failed open.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import QMPError
from . import info
from .faults import NodeFaults

SECTOR = 512
#: QEMU's largest node length: INT64_MAX rounded down to a sector.
MAX_LENGTH = ((1 << 63) - 1) // SECTOR * SECTOR
INT_MAX = (1 << 31) - 1
_T = TypeVar("_T")


def round_up(value: int, align: int = SECTOR) -> int:
    return -(-value // align) * align


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def non_negative(options: dict[str, Any], key: str) -> None:
    """QEMU parses size-like options as uint64 and refuses negative numbers.

    :raise QMPError: "Parameter '%s' expects a non-negative number below 2^64".
    """
    value = options.get(key)
    if value is not None and value < 0:
        raise QMPError(f"Parameter '{key}' expects a non-negative number below 2^64")


class JobBlocker:
    """A hold that makes operations on a node "busy" until released: a block
    job's (every operation), or a parent's on its backing node (QEMU's
    backing blocker: every operation but those in ``allow``)."""

    __slots__ = ("_node", "allow", "reason")

    def __init__(self, node: BlockNode, reason: str, allow: frozenset[str] = frozenset()) -> None:
        self._node: BlockNode | None = node
        #: the text after "Node '%s' is busy: "
        self.reason = reason
        #: operations this hold does not block (``backup-source``, ``stream``...)
        self.allow = allow

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
        #: How a node waits out a delay (``latency-ns``): a virtual clock's
        #: sleep under ``--clock virtual``.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))


class Opening(Protocol):
    """One node being opened: what a driver's ``open`` gets from the graph.

    ``options`` are the node's own options (schema-checked, ``read-only``
    inherited from the parent when not given). A driver calls ``name()``
    and ``child()`` in the order QEMU 7.2 does for it: a format driver opens
    its ``file`` child before it is named, a protocol or filter driver is
    named first. If ``open`` raises, the graph drops the children taken so
    far and undoes every node the failed tree opened.
    """

    @property
    def options(self) -> dict[str, Any]: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def io(self) -> IOContext: ...

    @property
    def node_name(self) -> str:
        """The node's name; only once ``name()`` was called."""
        ...

    @property
    def children(self) -> dict[str, BlockNode]:
        """The children taken so far, by role."""
        ...

    def name(self) -> str:
        """Name the node (given ``node-name`` or a generated one), then run
        the checks every driver shares (``detect-zeroes``).

        :raise QMPError: an invalid, duplicate or too long name, or a common check.
        """
        ...

    def child(self, role: str, ref: str | dict[str, Any] | None = None) -> BlockNode:
        """Take the child ``role``: ``ref`` (by default ``options[role]``) is a
        node name to look up or the options of a nested node to open, which
        inherits this node's ``read-only``.

        :raise QMPError: the node is not found, or the nested open failed.
        """
        ...

    def check_path(self, filename: str) -> None:
        """Refuse a file outside the daemon's allowed folders.

        :raise QMPError: "Path '%s' is not under an allowed directory".
        """
        ...


class BlockNode:
    """One node of the block graph; each driver subclasses it.

    The public I/O methods check the request, then call the driver's hooks.
    """

    #: QEMU's format name (``drv`` and ``image.format`` in query output); the
    #: registry in ``block/drivers`` maps it to the class.
    driver: ClassVar[str] = ""
    #: Write-locked graph sections QEMU 10.0 opens to attach each child when
    #: it opens a node of this driver (measured: raw 3, blkdebug 1); see
    #: :meth:`open_sections`.
    open_sections_per_child: ClassVar[int] = 1
    #: A protocol driver (QEMU's BDRV_O_PROTOCOL): the node is its own bytes,
    #: not a format over a child.
    protocol: ClassVar[bool] = False

    def open_sections(self) -> int:
        """Write-locked graph sections QEMU 10.0 opened attaching this node's
        children (each drains every node)."""
        return self.open_sections_per_child * len(self.children)

    def __init__(self, opening: Opening) -> None:
        self._ctx = opening.io
        #: runs the node's blocking calls in the graph's thread pool
        self.io: IOContext = opening.io
        self.node_name = opening.node_name
        self.options = opening.options
        self.read_only: bool = bool(self.options.get("read-only", False))
        self.detect_zeroes: str = str(self.options.get("detect-zeroes", "off"))
        #: Discard requests reach the node's bytes (``discard: unmap``); an
        #: implicit child may get it from its parent (see ``_Opening.child``).
        self.unmap: bool = self.options.get("discard") in ("unmap", "on")
        #: Whether the node may be used (QEMU 10.0's ``active``; blockdev-set-active).
        self.active: bool = bool(self.options.get("active", True))
        cache = self.options.get("cache") or {}
        self.cache_direct = bool(cache.get("direct", False))
        self.cache_no_flush = bool(cache.get("no-flush", False))
        self.children: dict[str, BlockNode] = dict(opening.children)
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
        self._order = 0  # position in the graph, set when the node is registered
        #: Injected faults (an extension), None until one is set.
        self.faults: NodeFaults | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_name!r}>"

    # -- opening (the driver interface) -----------------------------------

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        """Check ``opening.options``, name the node, take its children and
        build it, in QEMU 7.2's order and with its texts.

        :raise QMPError: an option QEMU refuses, or a failed name or child.
        """
        raise NotImplementedError

    @classmethod
    def child_unmap(cls, role: str, options: dict[str, Any]) -> bool:
        """Whether an implicit child opened for ``role`` (with no ``discard``
        of its own) discards, as QEMU opens it: a format's data child gets
        ``unmap`` (the format decides what to pass down), a filter's child
        takes its parent's, other children do not."""
        return False

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
        return self.block_ops(f"block device is in use by block job: {job_type}")

    def block_ops(self, reason: str, allow: frozenset[str] = frozenset()) -> JobBlocker:
        """Block every operation but ``allow`` on the node until ``release()``."""
        blocker = JobBlocker(self, reason, allow)
        self._blockers.append(blocker)
        return blocker

    def busy_reason_for(self, op: str) -> str | None:
        """Why ``op`` is blocked on the node (the newest hold that blocks it), or None."""
        for blocker in reversed(self._blockers):
            if op not in blocker.allow:
                return blocker.reason
        return None

    @property
    def busy_reason(self) -> str | None:
        """Why deleting the node is blocked (newest hold first), or None."""
        return self.busy_reason_for("drive-del")

    # -- I/O --------------------------------------------------------------

    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise os_error(errno_mod.EINVAL)
        if offset + length > self.size:
            raise os_error(errno_mod.EIO)
        if self.closed:
            raise os_error(errno_mod.ENOMEDIUM)

    def _check_write(self, offset: int, length: int) -> None:
        self._check_request(offset, length)
        if self.read_only:
            raise os_error(errno_mod.EPERM)

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``.

        :raise OSError: the request is out of range or the I/O failed.
        """
        self._check_request(offset, length)
        if self.faults:
            self.faults.check("read", offset, length)
        return await self._read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``.

        :raise OSError: out of range, read-only node, or the I/O failed.
        """
        self._check_write(offset, len(data))
        if self.faults:
            self.faults.check("write", offset, len(data))
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
        if self.faults:
            self.faults.check("write", offset, length)
        self._debug_event("pwritev_zero")
        try:
            await self._write_zeroes(offset, length)
        finally:
            self._debug_event("pwritev_done")

    async def discard(self, offset: int, length: int) -> None:
        """Drop ``length`` bytes at ``offset`` (they then read as zeros, or
        keep their data where the driver cannot drop them); nothing happens
        unless the node has ``discard: unmap``, as in QEMU.

        :raise OSError: out of range, read-only node, or the request failed.
        """
        self._check_write(offset, length)
        if not self.unmap or length == 0:
            return
        if self.faults:
            self.faults.check("write", offset, length)  # injected faults count it as a write
        await self._discard(offset, length)

    async def flush(self) -> None:
        """Flush written data to stable storage (a no-op with ``cache.no-flush``).

        :raise OSError: the flush failed.
        """
        if self.closed:
            raise os_error(errno_mod.ENOMEDIUM)
        if self.faults:
            self.faults.check("flush", 0, 0)
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
            raise os_error(errno_mod.EINVAL)
        self._check_request(offset, length)
        return await self._block_status(offset, length)

    async def allocated(self, offset: int, length: int) -> tuple[bool, int]:
        """``(allocated, run)``: whether the first ``run`` bytes at ``offset``
        are this layer's own (QEMU's ``bdrv_is_allocated``); a node without
        a backing node owns all its bytes.

        :raise OSError: the query failed.
        """
        return True, length

    def backing_node(self) -> BlockNode | None:
        """The node this one's unallocated bytes come from (a COW backing node)."""
        return None

    def cluster_size(self) -> int | None:
        """The image's cluster size where the format has one (QEMU's
        ``bdrv_get_info``), else None."""
        return None

    @property
    def faulty(self) -> bool:
        """Faults are set on this node or on a node below it."""
        return bool(self.faults) or any(child.faulty for child in self.children.values())

    def file_path(self) -> Path | None:
        """The file behind this node when its bytes are that file's bytes at offset 0."""
        return None

    def lock_image(self, write: bool) -> None:
        """A format parent keeps others from writing the node's host file
        (QEMU's image locking: it unshares write; with ``write`` it also
        takes write). Nodes without a host file lock nothing.

        :raise QMPError: 'Failed to get "write" lock' (another holder
            unshares write) or 'Failed to get shared "write" lock' (another
            holder writes).
        """
        return None

    def unlock_image(self) -> None:
        """Drop what :meth:`lock_image` took."""
        return None

    def reopen_read_write(self) -> None:
        """Make a read-only node writable (QEMU's ``bdrv_reopen_set_read_only``
        to false, as commit does to its base).

        :raise QMPError: the driver cannot be reopened.
        """
        raise QMPError("Block node is read-only")

    def reopen_read_only(self) -> None:
        """Undo :meth:`reopen_read_write` (commit gives its base back read-only)."""
        return None

    def refresh_length(self) -> None:
        """Read the length again after the node's bytes were rewritten from
        outside its I/O methods (an image created on it)."""
        return None

    def host_fd(self) -> int | None:
        """The open host file whose bytes are this node's, all of them, or None.

        For a format layer that does blocking I/O in the thread pool
        (:class:`qmpjobd.block.qcow2.FdHostFile` over this descriptor): it
        may grow the file, and then calls :meth:`refresh_length` (QEMU's
        node grows with the writes that pass its end).
        The node keeps owning the descriptor and closes it.
        """
        return None

    async def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def _write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._write(offset, bytes(length))

    async def _flush(self) -> None:
        return None

    async def _discard(self, offset: int, length: int) -> None:
        return None

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        return True, length

    def _debug_event(self, event: str) -> None:
        """A blkdebug event happened on this node (only blkdebug listens)."""
        return None

    def close(self) -> None:
        self.closed = True

    # -- query-named-block-nodes (rendered by block/info.py) --------------

    @property
    def filename(self) -> str:
        """QEMU's ``filename``: the exact filename, or a ``json:`` pseudo-filename."""
        return info.filename(self)

    def exact_filename(self) -> str | None:
        """A plain filename that describes the node fully, or None (then ``json:``)."""
        return None

    def strong_options(self) -> dict[str, Any]:
        """The options that change what the node's data is (QEMU's "strong"
        options), in the order QEMU adds them to the node's full options."""
        return {}

    def gather_child_options(self, opts: dict[str, Any]) -> None:
        """Add the children's full options to ``opts`` (QEMU's
        ``bdrv_gather_child_options``): by default every child under its role.
        A format with a backing file leaves out a backing child that was
        not given as an option."""
        for role, child in self.children.items():
            opts[role] = info.full_open_options(child)

    def has_info(self) -> bool:
        """Whether QEMU's get_info succeeds (then ``dirty-flag`` is shown)."""
        return False

    def actual_size(self) -> int | None:
        return None

    def filter_or_cow_child(self) -> BlockNode | None:
        """The child shown as ``backing-image`` and counted in
        ``backing_file_depth``: a filter's child, or a format's backing node."""
        return None

    def backing_file_name(self) -> str | None:
        """BlockDeviceInfo's ``backing_file``: the backing node's filename, if any."""
        return None

    def protocol_format_specific(self) -> dict[str, Any] | None:
        """ImageInfo's ``format-specific`` of a protocol node (QEMU 8.0 added
        ImageInfoSpecificFile), shown only by releases that have it; None:
        the driver has none."""
        return None

    def image_info_members(self) -> dict[str, Any]:
        """ImageInfo members only some formats have (``cluster-size``,
        ``backing-filename``, ``format-specific``...); placed in QAPI order
        by :mod:`qmpjobd.block.info`."""
        return {}
