"""qmpjobd's block layer: the node graph and its drivers.

Drivers: ``null-co`` (and ``null-aio``), ``file``, ``raw``, ``blkdebug``.

Public API: :class:`BlockGraph` (blockdev-add, blockdev-del, lookups,
query-named-block-nodes), :class:`BlockNode` (async I/O, ``block_job()``
holds), :func:`create_file`.

Must not import: jobs, sockets, JSON. It may import ``qmpjobd.errors`` and
``qmpjobd.clock``.
"""

from .create import create_file, create_file_sync
from .graph import BlockGraph
from .nodes import (
    BlkdebugNode,
    BlockNode,
    FileNode,
    JobBlocker,
    NodeReference,
    NullNode,
    RawNode,
)

__all__ = [
    "BlkdebugNode",
    "BlockGraph",
    "BlockNode",
    "FileNode",
    "JobBlocker",
    "NodeReference",
    "NullNode",
    "RawNode",
    "create_file",
    "create_file_sync",
]
