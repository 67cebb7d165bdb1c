"""``file``: a regular file on the host, read and written with pread/pwrite.

Options: ``filename`` (inside the daemon's allowed folders, when it has
any), ``cache.direct``, ``cache.no-flush``. A protocol driver: named first,
no children.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import os
import stat
import struct
from pathlib import Path
from typing import Any

from ...errors import QMPError
from ..node import BlockNode, Opening
from ..punch import punch_hole

#: Linux's FS_IOC_FSGETXATTR (``_IOR('X', 31, struct fsxattr)``) and that
#: struct's layout: xflags, extsize, nextents, projid, cowextsize, padding.
_FS_IOC_FSGETXATTR = 0x801C581F
_FSXATTR = struct.Struct("=5I8x")


def _extent_size_hint(fd: int) -> int:
    """The file's extent size hint (0: none, or the file system has none)."""
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))
    except OSError:
        return 0
    return int(_FSXATTR.unpack(raw)[1])


_ZERO_CHUNK = 1 << 20


#: Image locks held in this process, by host file (st_dev, st_ino): each
#: file node's ``write`` flag (it takes write; every holder unshares write).
_IMAGE_LOCKS: dict[tuple[int, int], dict[FileNode, bool]] = {}


class FileNode(BlockNode):
    """``file``."""

    driver = "file"
    protocol = True

    def __init__(self, opening: Opening, fd: int) -> None:
        super().__init__(opening)
        self.path = str(self.options["filename"])
        self._fd = fd
        # Like QEMU, the length is read once, at open: a file that shrinks
        # or grows behind the node's back keeps its length here, and what
        # lies past the file's real end reads as zeros.
        self._size = os.fstat(fd).st_size

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        opening.name()
        filename = opening.options["filename"]
        if not filename:
            raise QMPError("The 'file' block driver requires a file name")
        opening.check_path(filename)
        direct = bool((opening.options.get("cache") or {}).get("direct", False))
        try:
            fd = cls.open_fd(filename, opening.read_only, direct)
        except OSError as exc:
            raise QMPError(f"Could not open '{filename}': {os.strerror(exc.errno or 0)}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise QMPError(f"'file' driver requires '{filename}' to be a regular file")
            return cls(opening, fd)
        except BaseException:
            os.close(fd)
            raise

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

    def _length(self) -> int:
        if self.closed:
            return 0
        return self._size

    def file_path(self) -> Path | None:
        return Path(self.path)

    def reopen_read_write(self) -> None:
        if not self.read_only:
            return
        try:
            fd = self.open_fd(self.path, False, False)
        except OSError as exc:
            raise QMPError(f"Could not reopen file: {os.strerror(exc.errno or 0)}") from exc
        os.close(self._fd)
        self._fd = fd
        self.read_only = False

    def reopen_read_only(self) -> None:
        if self.read_only or self.closed:
            return
        try:
            fd = self.open_fd(self.path, True, False)
        except OSError:
            return  # keep the writable descriptor
        os.close(self._fd)
        self._fd = fd
        self.read_only = True

    def refresh_length(self) -> None:
        if not self.closed:
            self._size = os.fstat(self._fd).st_size

    def host_fd(self) -> int | None:
        return None if self.closed else self._fd

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

    def _punch(self, offset: int, length: int) -> None:
        end = min(offset + length, os.fstat(self._fd).st_size)
        if end > offset:
            punch_hole(self._fd, offset, end - offset)

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

    async def _discard(self, offset: int, length: int) -> None:
        await self.io.run(self._punch, offset, length)

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        return await self._ctx.run(self._status, offset, length)

    def _lock_key(self) -> tuple[int, int]:
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def lock_image(self, write: bool) -> None:
        holders = _IMAGE_LOCKS.setdefault(self._lock_key(), {})
        others = [w for node, w in holders.items() if node is not self]
        if write and others:
            raise QMPError('Failed to get "write" lock')
        if any(others):
            raise QMPError('Failed to get shared "write" lock')
        holders[self] = write

    def unlock_image(self) -> None:
        if self.closed:
            return
        key = self._lock_key()
        holders = _IMAGE_LOCKS.get(key, {})
        holders.pop(self, None)
        if not holders:
            _IMAGE_LOCKS.pop(key, None)

    def close(self) -> None:
        if not self.closed:
            self.unlock_image()
            super().close()
            os.close(self._fd)

    def strong_options(self) -> dict[str, Any]:
        return {"filename": self.path}

    def exact_filename(self) -> str | None:
        return self.path

    def has_info(self) -> bool:
        return True

    def actual_size(self) -> int | None:
        if self.closed:
            return 0
        return os.fstat(self._fd).st_blocks * 512

    def protocol_format_specific(self) -> dict[str, Any] | None:
        # ImageInfoSpecificFile: the extent size hint only where the file
        # system keeps one (XFS).
        data: dict[str, Any] = {}
        hint = 0 if self.closed else _extent_size_hint(self._fd)
        if hint:
            data["extent-size-hint"] = hint
        return {"type": "file", "data": data}
