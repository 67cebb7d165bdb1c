"""``raw``: a window (``offset``, ``size``) onto its ``file`` child.

A format driver: like QEMU, it opens its ``file`` child before it is named,
so a nested child gets its generated name first, and the window is checked
against the child's size.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import QMPError
from ..node import BlockNode, Opening, non_negative

_STRONG = ("offset", "size")


class RawNode(BlockNode):
    """``raw``."""

    driver = "raw"
    open_sections_per_child = 3

    def __init__(self, opening: Opening) -> None:
        super().__init__(opening)
        self.offset = int(self.options.get("offset", 0))
        self._fixed_size: int | None = int(self.options["size"]) if "size" in self.options else None

    @classmethod
    def child_unmap(cls, role: str, options: dict[str, Any]) -> bool:
        return role == "file"

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        options = opening.options
        child = opening.child("file")
        opening.name()
        non_negative(options, "offset")
        non_negative(options, "size")
        offset = options.get("offset", 0)
        real = child.size
        if offset > real:
            raise QMPError(
                f"Offset ({offset}) cannot be greater than size of the containing file ({real})"
            )
        if "size" in options:
            size = options["size"]
            if real - offset < size:
                raise QMPError(
                    f"The sum of offset ({offset}) and size ({size}) has to be smaller "
                    f"or equal to the  actual size of the containing file ({real})"
                )
            if size % 512:
                raise QMPError("Specified size is not multiple of 512")
        return cls(opening)

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

    async def _discard(self, offset: int, length: int) -> None:
        n = self._clamp(offset, length)
        if n:
            await self.file.discard(self.offset + offset, n)

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

    def strong_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in _STRONG if k in self.options}

    def exact_filename(self) -> str | None:
        if self.strong_options():
            return None
        return self.file.exact_filename()

    def has_info(self) -> bool:
        return self.file.has_info()

    def actual_size(self) -> int | None:
        return self.file.actual_size()
