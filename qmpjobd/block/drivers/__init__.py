"""The block drivers, one module each, and the registry that names them.

A driver is a :class:`~qmpjobd.block.node.BlockNode` subclass: its
``driver`` name, its ``open`` classmethod (option checks in QEMU's order,
naming, children), its I/O hooks and its info hooks. Adding one is a new
module here and its class in :data:`DRIVERS`; the graph and the info
rendering need no change.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..node import BlockNode
from . import blkdebug, file, null, raw


def _registry(*classes: type[BlockNode]) -> Mapping[str, type[BlockNode]]:
    found: dict[str, type[BlockNode]] = {}
    for cls in classes:
        if not cls.driver or cls.driver in found:
            raise ValueError(f"driver name missing or registered twice: {cls!r}")
        found[cls.driver] = cls
    return MappingProxyType(found)


#: Driver name (``blockdev-add``'s ``driver``) -> node class.
DRIVERS: Mapping[str, type[BlockNode]] = _registry(
    null.NullNode,
    null.NullAioNode,
    file.FileNode,
    raw.RawNode,
    blkdebug.BlkdebugNode,
)
