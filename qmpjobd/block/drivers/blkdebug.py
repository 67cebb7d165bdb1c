"""``blkdebug``: passes I/O to its ``image`` child, failing it by rule.

Options: ``config`` (an empty rules file; rules come as ``inject-error``
and ``set-state``), ``align`` and the request limits. A filter: named
first, then its options are checked, then its ``image`` child is taken and
the limits are checked against the child's alignment. The rule engine is
:mod:`.blkdebug_rules`.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ...errors import QMPError
from ...wire.qdict import qdict_order
from ..node import INT_MAX, BlockNode, Opening, non_negative, os_error
from .blkdebug_rules import Blkdebug

LIMITS = (
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
)
SIZE_OPTIONS = ("align", *LIMITS)
_INJECT_MEMBERS = ("event", "state", "iotype", "errno", "sector", "once", "immediately")
_SET_STATE_MEMBERS = ("event", "state", "new_state")


def _read_config(path: str) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise QMPError(
            f"Could not read blkdebug config file: {os.strerror(exc.errno or 0)}"
        ) from exc
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            raise QMPError("blkdebug config file rules are not supported; use inject-error")


class BlkdebugNode(BlockNode):
    """``blkdebug``."""

    driver = "blkdebug"
    protocol = True

    def __init__(self, opening: Opening) -> None:
        super().__init__(opening)
        self.config: str | None = self.options.get("config")
        self.rules = Blkdebug.from_options(
            self.options.get("inject-error", ()), self.options.get("set-state", ())
        )

    @classmethod
    def child_unmap(cls, role: str, options: dict[str, Any]) -> bool:
        return role == "image" and options.get("discard") in ("unmap", "on")

    @classmethod
    def open(cls, opening: Opening) -> BlockNode:
        options = opening.options
        opening.name()
        for key in SIZE_OPTIONS:
            non_negative(options, key)
            if key != "align" and options.get(key, 0) > INT_MAX:
                raise QMPError(f"Parameter '{key}' expects int32_t")
        config = options.get("config")
        if config is not None:
            _read_config(config)
        child = opening.child("image")
        align = options.get("align", 0)
        if align and (align >= INT_MAX or align & (align - 1)):
            raise QMPError(f"Cannot meet constraints with align {align}")
        unit = max(align, 512 if child.cache_direct else 1)
        for key in LIMITS:
            value = options.get(key, 0)
            if value and (value >= INT_MAX or value % unit):
                raise QMPError(f"Cannot meet constraints with {key} {value}")
        return cls(opening)

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
            raise os_error(code)

    async def _read(self, offset: int, length: int) -> bytes:
        await self._check(offset, length, "read")
        return await self.image.read(offset, length)

    async def _write(self, offset: int, data: bytes) -> None:
        await self._check(offset, len(data), "write")
        await self.image.write(offset, data)

    async def _write_zeroes(self, offset: int, length: int) -> None:
        await self._check(offset, length, "write-zeroes")
        await self.image.write_zeroes(offset, length)

    async def _discard(self, offset: int, length: int) -> None:
        await self._check(offset, length, "discard")
        await self.image.discard(offset, length)

    async def _flush(self) -> None:
        await self._check(0, 0, "flush")
        await self.image.flush()

    async def _block_status(self, offset: int, length: int) -> tuple[bool | None, int]:
        await self._check(offset, length, "block-status")
        return await self.image.block_status(offset, length)

    def strong_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.config is not None:
            opts["config"] = self.config
        for key in SIZE_OPTIONS:
            if key in self.options:
                opts[key] = self.options[key]
        # QEMU keeps list options flattened ("inject-error.0.event"), members
        # in QAPI order, and copies them into the node's full options by
        # iterating that QDict: they arrive in its order, which decides how
        # keys sharing a bucket print (all inject-error.N.event/errno do).
        flat: dict[str, Any] = {}
        for key, members in (
            ("inject-error", _INJECT_MEMBERS),
            ("set-state", _SET_STATE_MEMBERS),
        ):
            for i, item in enumerate(self.options.get(key, ())):
                for member in members:
                    if member in item:
                        flat[f"{key}.{i}.{member}"] = item[member]
        for key in qdict_order(flat):
            opts[key] = flat[key]
        return opts

    def exact_filename(self) -> str | None:
        below = self.image.exact_filename()
        if below is None:
            return None
        if any(k != "config" for k in self.strong_options()):
            return None
        return f"blkdebug:{self.config or ''}:{below}"

    def has_info(self) -> bool:
        return self.image.has_info()

    def filter_or_cow_child(self) -> BlockNode | None:
        return self.image
