"""``qcow2``: a qcow2 image in its ``file`` child, over an optional backing node.

A format driver: it takes ``file`` before it is named, opens the image
(:class:`~qmpjobd.block.qcow2.Qcow2Image`, blocking, as QEMU's open is) on
the child's host file, then takes ``backing``: a node name, nested options,
``null`` (no backing node), or, when absent, the backing file named in the
image header, opened read-only as implicit nodes (a ``file`` node and a
format node, with generated names). A backing node is blocked for every
operation but those QEMU leaves open on a backing node (backup, stream,
commit target), with "node is used as backing hd of '%s'".

I/O runs the image's blocking methods in the thread pool; clusters not
allocated in the image are read from the backing node (zeros past its end,
or without one).

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from typing import Any

from ...errors import QMPError
from .. import info
from ..node import BlockNode, JobBlocker, Opening
from ..qcow2 import MAGIC, Allocation, FdHostFile, Qcow2Header, Qcow2Image, create

#: Operations a backing node stays open for (QEMU's ``bdrv_backing_attach``).
BACKING_ALLOWS = frozenset({"commit-target", "stream", "backup-source", "backup-target"})
_MISSING = object()


def full_backing_filename(file: BlockNode, backing: str) -> str:
    """The header's backing file name made absolute against the image's folder."""
    if backing.startswith("/") or backing.startswith("json:"):
        return backing
    path = file.file_path()
    base = os.path.dirname(str(path)) if path is not None else ""
    return os.path.join(base, backing) if base else backing


def _probe(filename: str) -> str:
    """The format of a backing file named without one: qcow2 by its magic, else raw."""
    try:
        with open(filename, "rb") as f:
            return "qcow2" if f.read(4) == MAGIC else "raw"
    except OSError:
        return "raw"


class Qcow2Node(BlockNode):
    """``qcow2``."""

    driver = "qcow2"
    #: QEMU 10.0 attaches the ``file`` child in three write-locked sections,
    #: as for ``raw``, and the backing node in one (measured: a chain of n
    #: layers opened from the header opens 3n + (n - 1)).
    open_sections_per_child = 3

    def open_sections(self) -> int:
        return self.open_sections_per_child + (1 if self.backing is not None else 0)

    def __init__(self, opening: Opening, image: Qcow2Image, implicit_backing: bool) -> None:
        super().__init__(opening)
        self.image = image
        backing = self.backing
        #: QEMU's auto_backing_file: the backing node's filename when it was
        #: opened from the header, else the header's name
        self._auto_backing = (
            backing.filename
            if implicit_backing and backing is not None
            else (image.backing_file or "")
        )
        self._lock = asyncio.Lock()
        self._backing_blocker: JobBlocker | None = None
        self._block_backing()

    def _block_backing(self) -> None:
        if self._backing_blocker is not None:
            self._backing_blocker.release()
            self._backing_blocker = None
        backing = self.backing
        if backing is not None:
            self._backing_blocker = backing.block_ops(
                f"node is used as backing hd of '{self.node_name}'", BACKING_ALLOWS
            )

    def reopen_read_write(self) -> None:
        if not self.read_only:
            return
        self.file.lock_image(write=True)
        self.file.reopen_read_write()
        fd = self.file.host_fd()
        assert fd is not None
        host = self.image.file
        assert isinstance(host, FdHostFile)
        host.fd = fd
        self.image.read_only = False
        self.image._prepare_for_writing()
        self.read_only = False

    def reopen_read_only(self) -> None:
        if self.read_only or self.closed:
            return
        self.image.flush()
        self.image._set_dirty(False)
        self.image.read_only = True
        self.file.lock_image(write=False)
        self.file.reopen_read_only()
        fd = self.file.host_fd()
        host = self.image.file
        if fd is not None and isinstance(host, FdHostFile):
            host.fd = fd
        self.read_only = True

    def backing_changed(self) -> None:
        """The graph gave the node another backing node (or none)."""
        self._block_backing()

    def change_backing_file(self, backing_file: str | None, backing_format: str | None) -> None:
        """Rewrite the header's backing file name and format (blocking, as
        QEMU's ``bdrv_change_backing_file``).

        :raise OSError: the header could not be written.
        """
        self.image.set_backing(backing_file, backing_format if backing_file else None)
        self.file.refresh_length()
        self._auto_backing = backing_file or ""

    @classmethod
    def child_unmap(cls, role: str, options: dict[str, Any]) -> bool:
        return role == "file"

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        options = opening.options
        child = opening.child("file")
        opening.name()
        child.lock_image(write=not opening.read_only)
        fd = child.host_fd()
        if fd is None:
            raise QMPError("Image is not in qcow2 format")
        host = FdHostFile(fd, no_flush=child.cache_no_flush)
        try:
            image = Qcow2Image.open(host, read_only=opening.read_only)
        except BaseException:
            child.unlock_image()
            raise
        try:
            if options.get("discard-no-unref") and image.version < 3:
                raise QMPError("discard-no-unref is only supported since qcow2 version 3")
            implicit = False
            ref = options.get("backing", _MISSING)
            try:
                if isinstance(ref, str | dict):
                    if isinstance(ref, dict) and "read-only" not in ref:
                        ref = {**ref, "read-only": True}
                    opening.child("backing", ref)
                elif ref is _MISSING and image.backing_file:
                    filename = full_backing_filename(child, image.backing_file)
                    fmt = image.backing_format or _probe(filename)
                    file_opts = {"driver": "file", "filename": filename}
                    opening.child("backing", {"driver": fmt, "file": file_opts, "read-only": True})
                    implicit = True
            except QMPError as exc:
                raise QMPError(f"Could not open backing file: {exc.desc}") from exc
            return cls(opening, image, implicit)
        except BaseException:
            image.read_only = True  # nothing written: close without touching the file
            image.close()
            child.unlock_image()
            raise

    # -- children ---------------------------------------------------------

    @property
    def file(self) -> BlockNode:
        return self.children["file"]

    @property
    def backing(self) -> BlockNode | None:
        return self.children.get("backing")

    def backing_node(self) -> BlockNode | None:
        return self.backing

    # -- I/O --------------------------------------------------------------

    def _length(self) -> int:
        return self.image.size

    async def _read_backing(self, offset: int, length: int) -> bytes:
        backing = self.backing
        if backing is None:
            return bytes(length)
        n = max(0, min(length, backing.size - offset))
        data = await backing.read(offset, n) if n else b""
        return data + bytes(length - n)

    def _read_layer(self, offset: int, length: int) -> list[tuple[int, int, bytes | None]]:
        """This layer's runs: ``(offset, length, data)``, data None where unallocated."""
        out: list[tuple[int, int, bytes | None]] = []
        pos, end = offset, offset + length
        while pos < end:
            extent = self.image.block_status(pos, end - pos)
            n = extent.length
            if extent.kind is Allocation.UNALLOCATED:
                out.append((pos, n, None))
            else:
                out.append((pos, n, self.image.read(pos, n)))
            pos += n
        return out

    async def _read(self, offset: int, length: int) -> bytes:
        self.file._debug_event("read_aio")
        runs = await self._ctx.run(self._read_layer, offset, length)
        parts = []
        for pos, n, data in runs:
            parts.append(data if data is not None else await self._read_backing(pos, n))
        return b"".join(parts)

    async def _cow_reader(self, ranges: list[tuple[int, int]]) -> Any:
        """A backing-read callback serving ``ranges``, read ahead from the backing node."""
        got = [(pos, await self._read_backing(pos, n)) for pos, n in ranges]

        def backing_read(offset: int, length: int) -> bytes:
            for pos, data in got:
                if pos <= offset and offset + length <= pos + len(data):
                    return data[offset - pos : offset - pos + length]
            raise OSError(5, "backing range not read ahead")

        return backing_read

    async def _write(self, offset: int, data: bytes) -> None:
        self.file._debug_event("write_aio")
        async with self._lock:
            ranges = await self._ctx.run(self.image.cow_ranges, offset, len(data))
            reader = await self._cow_reader(ranges)
            await self._ctx.run(self.image.write, offset, data, reader)
        self.file.refresh_length()

    async def _write_zeroes(self, offset: int, length: int) -> None:
        async with self._lock:
            ranges = await self._ctx.run(self.image.cow_ranges, offset, length)
            reader = await self._cow_reader(ranges)
            await self._ctx.run(self.image.write_zeroes, offset, length, reader)
        self.file.refresh_length()

    async def _flush(self) -> None:
        await self._ctx.run(self.image.flush)

    async def _discard(self, offset: int, length: int) -> None:
        # QEMU's pass-discard-request (default: the node's own discard=unmap)
        # passes freed clusters down, where the file child must unmap too.
        punch = bool(self.options.get("pass-discard-request", True)) and self.file.unmap
        async with self._lock:
            await self._ctx.run(functools.partial(self.image.discard, offset, length, punch=punch))
        self.file.refresh_length()

    def cluster_size(self) -> int | None:
        return self.image.cluster_size

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        extent = await self._ctx.run(self.image.block_status, offset, length)
        if extent.kind is Allocation.DATA:
            return True, extent.length
        if extent.kind is Allocation.ZERO:
            return False, extent.length
        backing = self.backing
        if backing is None or offset >= backing.size:
            return False, extent.length
        n = min(extent.length, backing.size - offset)
        return await backing.block_status(offset, n)

    async def allocated(self, offset: int, length: int) -> tuple[bool, int]:
        """Whether the first run of bytes at ``offset`` is allocated in this layer."""
        extent = await self._ctx.run(self.image.block_status, offset, length)
        return extent.kind is not Allocation.UNALLOCATED, extent.length

    def close(self) -> None:
        if not self.closed:
            super().close()
            if self._backing_blocker is not None:
                self._backing_blocker.release()
            self.image.close()
            self.file.unlock_image()

    # -- query-named-block-nodes -------------------------------------------

    def backing_overridden(self) -> bool:
        """QEMU's ``bdrv_backing_overridden``: the backing node is not the one
        the header names."""
        backing = self.backing
        if backing is None:
            return self._auto_backing != ""
        return self._auto_backing != backing.filename

    def exact_filename(self) -> str | None:
        if self.backing_overridden():
            return None
        return self.file.exact_filename()

    def gather_child_options(self, opts: dict[str, Any]) -> None:
        opts["file"] = info.full_open_options(self.file)
        if self.backing_overridden():
            backing = self.backing
            opts["backing"] = None if backing is None else info.full_open_options(backing)

    def has_info(self) -> bool:
        return True

    def actual_size(self) -> int | None:
        return self.file.actual_size()

    def filter_or_cow_child(self) -> BlockNode | None:
        return self.backing

    def image_info_members(self) -> dict[str, Any]:
        members: dict[str, Any] = {"cluster-size": self.image.cluster_size}
        header = self.image.backing_file
        if header:
            members["backing-filename"] = header
            members["full-backing-filename"] = full_backing_filename(self.file, header)
            if self.image.backing_format:
                members["backing-filename-format"] = self.image.backing_format
        members["format-specific"] = {"type": "qcow2", "data": self.image.format_specific()}
        return members

    def backing_file_name(self) -> str | None:
        """BlockDeviceInfo's ``backing_file``: the backing node's filename."""
        backing = self.backing
        return None if backing is None else backing.filename


# -- blockdev-create ------------------------------------------------------------

#: Write-locked graph sections QEMU 10.0's qcow2 creation opens on its way
#: (the protocol node under a block backend, the new image opened as qcow2
#: over it and closed again), measured with an unrelated running job.
QCOW2_CREATE_SECTIONS = 14


@dataclass(frozen=True, slots=True)
class Qcow2CreateOptions:
    """``blockdev-create``'s BlockdevCreateOptionsQcow2, less ``file``."""

    size: int
    version: int = 3
    cluster_size: int = 65536
    backing_file: str | None = None
    backing_fmt: str | None = None
    lazy_refcounts: bool = False
    refcount_bits: int = 16
    preallocation: str = "off"


def check_create(opts: Qcow2CreateOptions) -> None:
    """QEMU 7.2's checks of the qcow2 creation options, in its order.

    :raise QMPError: QEMU's texts.
    """
    if opts.size % 512:
        raise QMPError("Image size must be a multiple of 512 bytes")
    cs = opts.cluster_size
    if cs < 512 or cs > 2 << 20 or cs & (cs - 1):
        raise QMPError("Cluster size must be a power of two between 512 and 2048k")
    if opts.backing_file is not None and opts.preallocation != "off":
        raise QMPError(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if opts.backing_fmt is not None and opts.backing_file is None:
        raise QMPError("Backing format cannot be used without backing file")
    if opts.version < 3 and opts.lazy_refcounts:
        raise QMPError(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    bits = opts.refcount_bits
    if bits < 1 or bits > 64 or bits & (bits - 1):
        raise QMPError("Refcount width must be a power of two and may not exceed 64 bits")
    if opts.version < 3 and bits != 16:
        raise QMPError(
            "Different refcount widths than 16 bits require compatibility level 1.1 or "
            "above (use version=v3 or greater)"
        )


def _create_sync(fd: int, opts: Qcow2CreateOptions) -> None:
    host = FdHostFile(fd)
    falloc = opts.preallocation in ("falloc", "full")
    create(
        host,
        opts.size,
        version=opts.version,
        cluster_size=opts.cluster_size,
        backing_file=opts.backing_file,
        backing_format=opts.backing_fmt,
        lazy_refcounts=opts.lazy_refcounts,
        refcount_bits=opts.refcount_bits,
        preallocation="metadata" if falloc else opts.preallocation,
    )
    # The file as QEMU leaves it: the header's cluster written whole, and
    # without preallocation the file ends with the L1 table (written out,
    # rounded up to a sector), so file size and allocation match QEMU's.
    header = Qcow2Header.parse(host.pread(0, opts.cluster_size))
    host.pwrite(0, host.pread(0, opts.cluster_size))
    if opts.preallocation == "off" and header.l1_size:
        l1_bytes = -(-header.l1_size * 8 // 512) * 512
        host.truncate(header.l1_table_offset + l1_bytes)
        host.pwrite(header.l1_table_offset, bytes(l1_bytes))
    if falloc:
        # Metadata preallocation, then the data clusters allocated on the host.
        os.posix_fallocate(fd, 0, host.size())
    host.sync()


async def create_on(node: BlockNode, opts: Qcow2CreateOptions) -> None:
    """Format ``node`` (a protocol node, e.g. ``file``) as a qcow2 image.

    :raise QMPError: a refused option or node, with QEMU's texts.
    :raise OSError: the host file could not be written.
    """
    check_create(opts)
    if node.read_only:
        raise QMPError("Block node is read-only")
    fd = node.host_fd()
    if fd is None:
        raise QMPError("Image is not in qcow2 format")
    await node.io.run(_create_sync, fd, opts)
    node.refresh_length()
