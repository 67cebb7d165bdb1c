"""``null-co`` and ``null-aio``: a node of a given size that reads zeros and forgets writes.

Options: ``size`` (default 1 GiB), ``latency-ns``, ``read-zeroes``. A
protocol driver: named first, no children.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

from typing import Any

from ...errors import QMPError
from ..node import MAX_LENGTH, BlockNode, Opening, non_negative, round_up

_STRONG = ("size", "read-zeroes")


class NullNode(BlockNode):
    """``null-co``."""

    driver = "null-co"
    protocol = True
    DEFAULT_SIZE = 1 << 30

    def __init__(self, opening: Opening) -> None:
        super().__init__(opening)
        self._bytes = int(self.options.get("size", self.DEFAULT_SIZE))
        self.latency_ns = int(self.options.get("latency-ns", 0))
        self.read_zeroes = bool(self.options.get("read-zeroes", False))

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        options = opening.options
        opening.name()
        non_negative(options, "size")
        if options.get("latency-ns", 0) < 0:
            raise QMPError("latency-ns is invalid")
        if round_up(options.get("size", 0)) > MAX_LENGTH:
            raise QMPError("Could not refresh total sector count: File too large")
        return cls(opening)

    def _length(self) -> int:
        return self._bytes

    async def _delay(self) -> None:
        if self.latency_ns:
            await self._ctx.sleep(self.latency_ns / 1e9)

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

    def strong_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in _STRONG if k in self.options}

    def exact_filename(self) -> str | None:
        if any(k in self.options for k in _STRONG):
            return None
        return f"{self.driver}://"

    def actual_size(self) -> int | None:
        return 0


class NullAioNode(NullNode):
    """``null-aio``: ``null-co`` under another name."""

    driver = "null-aio"
