"""qmpjobd's block layer: the node graph and its drivers.

Drivers: ``null-co`` (and ``null-aio``), ``file``, ``raw``, ``blkdebug``, one
module each in ``drivers/``, registered by name in ``drivers/__init__.py``.

Public API: :class:`BlockGraph` (blockdev-add, blockdev-del, lookups,
query-named-block-nodes), :class:`BlockNode` (async I/O, ``block_job()``
holds), :func:`create_file`.

Must not import: jobs, sockets, JSON. It may import ``qmpjobd.errors`` and
``qmpjobd.clock``.
"""

from .create import create_file, create_file_sync
from .drivers.blkdebug import BlkdebugNode
from .drivers.file import FileNode
from .drivers.null import NullNode
from .drivers.raw import RawNode
from .graph import BlockGraph
from .node import BlockNode, JobBlocker, NodeReference

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
