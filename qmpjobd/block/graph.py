"""The block graph: ``blockdev-add``, ``blockdev-del``, lookups and the node list.

The command layer has already checked the arguments against the JSON Schema
(types, required and unknown members, enum values); everything semantic is
checked here, in QEMU 7.2's order and with its texts:

* A node gets its name when it is opened: ``raw`` opens its ``file`` child
  first and is named after it, ``null-co``, ``file`` and ``blkdebug`` are
  named first. Unnamed nested children get generated names
  ``#block<counter><two random digits>``; the counter also advances for
  nodes that then fail to open, like QEMU's.
* ``query-named-block-nodes`` lists nodes in the reverse order of naming.
* Children given as options are implicit: they belong to their parent, go
  away with it, and cannot be deleted by ``blockdev-del``.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import logging
import os
import random
import re
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ..errors import QMPError
from .nodes import (
    _BLKDEBUG_LIMITS,
    BLKDEBUG_SIZE_OPTIONS,
    BlkdebugNode,
    BlockNode,
    FileNode,
    IOContext,
    NodeReference,
    NullAioNode,
    NullNode,
    RawNode,
    round_up,
)

DEFAULT_IO_WORKERS = 4
_NODE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_NODE_NAME_MAX = 31
_INT_MAX = (1 << 31) - 1
#: QEMU's largest node length: INT64_MAX rounded down to a sector.
_MAX_LENGTH = ((1 << 63) - 1) // 512 * 512


def _non_negative(options: dict[str, Any], key: str) -> None:
    """QEMU parses size-like options as uint64 and refuses negative numbers."""
    value = options.get(key)
    if value is not None and value < 0:
        raise QMPError(f"Parameter '{key}' expects a non-negative number below 2^64")


log = logging.getLogger(__name__)


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path``, with symlinks resolved, lies inside one of ``roots``."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in roots)


class GraphObserver(Protocol):
    """Told of the nodes the monitor adds and deletes (to keep them across restarts)."""

    def node_added(self, node_name: str, options: dict[str, Any]) -> None: ...

    def node_deleted(self, node_name: str) -> None: ...


class BlockGraph:
    """All block nodes of the daemon.

    :param allow_paths: when given, ``file`` nodes (and created files) must
        resolve, symlinks followed, to a path inside one of these folders.
    :param executor: runs blocking file I/O; by default a small thread pool
        owned (and shut down) by the graph.
    :param rng: draws the two random digits of generated node names.
    """

    def __init__(
        self,
        *,
        allow_paths: Sequence[Path] | None = None,
        executor: Executor | None = None,
        rng: Callable[[], int] | None = None,
    ) -> None:
        self._allow = None if allow_paths is None else tuple(Path(p).resolve() for p in allow_paths)
        self._own_executor = executor is None
        self.executor: Executor = (
            executor
            if executor is not None
            else ThreadPoolExecutor(DEFAULT_IO_WORKERS, thread_name_prefix="qmpjobd-io")
        )
        self._ctx = IOContext(self.executor)
        self._rng = rng if rng is not None else (lambda: random.randrange(100))
        self._nodes: dict[str, BlockNode] = {}
        self._id_counter = 0
        self._pending: set[str] = set()
        self._order = 0
        self._closed = False
        #: Told of every blockdev-add and blockdev-del that succeeded.
        self.observers: list[GraphObserver] = []

    # -- lookups ----------------------------------------------------------

    def lookup(self, device_or_node: str) -> BlockNode:
        """The node named ``device_or_node``.

        :raise QMPError: "Cannot find device='%s' nor node-name='%s'".
        """
        node = self._nodes.get(device_or_node)
        if node is None:
            raise QMPError(
                f"Cannot find device='{device_or_node}' nor node-name='{device_or_node}'"
            )
        return node

    def get(self, node_name: str) -> BlockNode | None:
        return self._nodes.get(node_name)

    def __contains__(self, node_name: object) -> bool:
        return node_name in self._nodes

    def nodes(self) -> list[BlockNode]:
        """All nodes, newest first."""
        return sorted(self._nodes.values(), key=lambda n: n._order, reverse=True)

    def query_named_block_nodes(self) -> list[dict[str, Any]]:
        """``query-named-block-nodes``: BlockDeviceInfo of every node, newest first."""
        return [node.device_info() for node in self.nodes()]

    def reference(self, node: BlockNode) -> NodeReference:
        """Keep ``node`` in use (blockdev-del then answers "Block device %s is in use")."""
        node.refcnt += 1
        return NodeReference(node, self._unref)

    # -- blockdev-add -----------------------------------------------------

    def add(self, options: dict[str, Any]) -> BlockNode:
        """``blockdev-add`` with schema-checked ``options``; returns the new node.

        :raise QMPError: any semantic error, with QEMU's text.
        """
        if "node-name" not in options:
            raise QMPError("'node-name' must be specified for the root node")
        node = self._open_tree(options)
        node.monitor_owned = True
        node.refcnt += 1
        for observer in self.observers:
            observer.node_added(node.node_name, options)
        return node

    def _assign_name(self, options: dict[str, Any]) -> tuple[str, int]:
        """Name a node being opened and give it its place in the node list.

        The name is reserved at once, so a nested child cannot take it.
        """
        name: str | None = options.get("node-name")
        if name is None:
            name = f"#block{self._id_counter}{self._rng() % 100:02d}"
            self._id_counter += 1
        else:
            if not _NODE_NAME_RE.match(name):
                raise QMPError(f"Invalid node-name: '{name}'")
            if name in self._nodes or name in self._pending:
                raise QMPError(f"Duplicate nodes with node-name='{name}'")
            if len(name) > _NODE_NAME_MAX:
                raise QMPError("Node name too long")
        self._pending.add(name)
        self._order += 1
        return name, self._order

    def _register(self, node: BlockNode, order: int, opened: list[BlockNode]) -> None:
        self._pending.discard(node.node_name)
        node._order = order
        self._nodes[node.node_name] = node
        for child in node.children.values():
            child.parent_count += 1
        opened.append(node)

    def _child(
        self, ref: str | dict[str, Any], parent_ro: bool, opened: list[BlockNode]
    ) -> BlockNode:
        child = self.lookup(ref) if isinstance(ref, str) else self._open(ref, parent_ro, opened)
        child.refcnt += 1
        return child

    def _common_checks(self, options: dict[str, Any]) -> None:
        if options.get("detect-zeroes") == "unmap" and options.get("discard") != "unmap":
            raise QMPError(
                "setting detect-zeroes to unmap is not allowed "
                "without setting discard operation to unmap"
            )

    def _open(
        self, options: dict[str, Any], parent_ro: bool | None, opened: list[BlockNode]
    ) -> BlockNode:
        options = dict(options)  # the node keeps its options; the caller's dict stays as given
        if "read-only" not in options and parent_ro is not None:
            options["read-only"] = parent_ro
        read_only = bool(options.get("read-only", False))
        driver = options["driver"]
        if driver == "raw":
            return self._open_raw(options, read_only, opened)
        if driver in ("null-co", "null-aio"):
            return self._open_null(options, opened)
        if driver == "file":
            return self._open_file(options, read_only, opened)
        if driver == "blkdebug":
            return self._open_blkdebug(options, read_only, opened)
        raise QMPError(f"Parameter 'driver' does not accept value '{driver}'")

    def _open_null(self, options: dict[str, Any], opened: list[BlockNode]) -> BlockNode:
        name, order = self._assign_name(options)
        self._common_checks(options)
        _non_negative(options, "size")
        if options.get("latency-ns", 0) < 0:
            raise QMPError("latency-ns is invalid")
        if round_up(options.get("size", 0)) > _MAX_LENGTH:
            raise QMPError("Could not refresh total sector count: File too large")
        cls = NullAioNode if options["driver"] == "null-aio" else NullNode
        node = cls(self._ctx, name, options)
        self._register(node, order, opened)
        return node

    def _open_file(
        self, options: dict[str, Any], read_only: bool, opened: list[BlockNode]
    ) -> BlockNode:
        name, order = self._assign_name(options)
        self._common_checks(options)
        filename = options["filename"]
        if not filename:
            raise QMPError("The 'file' block driver requires a file name")
        self.check_path(filename)
        direct = bool((options.get("cache") or {}).get("direct", False))
        try:
            fd = FileNode.open_fd(filename, read_only, direct)
        except OSError as exc:
            raise QMPError(f"Could not open '{filename}': {os.strerror(exc.errno or 0)}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise QMPError(f"'file' driver requires '{filename}' to be a regular file")
        node = FileNode(self._ctx, name, options, fd)
        self._register(node, order, opened)
        return node

    def _open_raw(
        self, options: dict[str, Any], read_only: bool, opened: list[BlockNode]
    ) -> BlockNode:
        child = self._child(options["file"], read_only, opened)
        try:
            name, order = self._assign_name(options)
            self._common_checks(options)
            _non_negative(options, "offset")
            _non_negative(options, "size")
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
        except BaseException:
            child.refcnt -= 1
            raise
        node = RawNode(self._ctx, name, options, child)
        self._register(node, order, opened)
        return node

    def _open_blkdebug(
        self, options: dict[str, Any], read_only: bool, opened: list[BlockNode]
    ) -> BlockNode:
        name, order = self._assign_name(options)
        self._common_checks(options)
        for key in BLKDEBUG_SIZE_OPTIONS:
            _non_negative(options, key)
            if key != "align" and options.get(key, 0) > _INT_MAX:
                raise QMPError(f"Parameter '{key}' expects int32_t")
        config = options.get("config")
        if config is not None:
            self._read_blkdebug_config(config)
        child = self._child(options["image"], read_only, opened)
        try:
            align = options.get("align", 0)
            if align and (align >= _INT_MAX or align & (align - 1)):
                raise QMPError(f"Cannot meet constraints with align {align}")
            unit = max(align, 512 if getattr(child, "cache_direct", False) else 1)
            for key in _BLKDEBUG_LIMITS:
                value = options.get(key, 0)
                if value and (value >= _INT_MAX or value % unit):
                    raise QMPError(f"Cannot meet constraints with {key} {value}")
        except BaseException:
            child.refcnt -= 1
            raise
        node = BlkdebugNode(self._ctx, name, options, child)
        self._register(node, order, opened)
        return node

    @staticmethod
    def _read_blkdebug_config(path: str) -> None:
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

    def open_implicit(self, options: dict[str, Any]) -> NodeReference:
        """Open a node the way a command opens its own target (drive-backup,
        drive-mirror): a ``node-name`` is optional, the node is not owned by
        the monitor, and it goes away when the returned reference is released.

        :raise QMPError: any error ``blockdev-add`` would give for ``options``.
        """
        node = self._open_tree(options)
        return self.reference(node)

    def _open_tree(self, options: dict[str, Any]) -> BlockNode:
        """Open a node and its nested children; on failure, undo every open."""
        opened: list[BlockNode] = []
        try:
            return self._open(options, None, opened)
        except BaseException:
            self._pending.clear()
            for n in reversed(opened):
                self._forget(n)
                for child in n.children.values():
                    if child not in opened:
                        child.refcnt -= 1
            raise

    def has_parents(self, node: BlockNode) -> bool:
        """Whether another node uses ``node`` as a child."""
        return node.parent_count > 0

    # -- blockdev-del -----------------------------------------------------

    def delete(self, node_name: str) -> None:
        """``blockdev-del``.

        :raise QMPError: not found, busy (a block job holds it), not added by
            the monitor, or still used by another node or a job.
        """
        node = self._nodes.get(node_name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{node_name}'")
        if node.backends:
            raise QMPError(f"Node {node_name} is in use")
        reason = node.busy_reason
        if reason is not None:
            raise QMPError(
                f"Node '{node_name}' is busy: block device is in use by block job: {reason}"
            )
        if not node.monitor_owned:
            raise QMPError(f"Node {node_name} is not owned by the monitor")
        if node.refcnt > 1:
            raise QMPError(f"Block device {node_name} is in use")
        node.monitor_owned = False
        self._unref(node)
        for observer in self.observers:
            observer.node_deleted(node_name)

    def _unref(self, node: BlockNode) -> None:
        node.refcnt -= 1
        if node.refcnt <= 0:
            self._forget(node)
            for child in node.children.values():
                self._unref(child)

    def _forget(self, node: BlockNode) -> None:
        if self._nodes.get(node.node_name) is node:
            del self._nodes[node.node_name]
            for child in node.children.values():
                child.parent_count -= 1
        node.close()

    # -- files ------------------------------------------------------------

    def check_path(self, filename: str) -> None:
        """Refuse ``filename`` unless it resolves inside an allowed folder.

        :raise QMPError: "Path '%s' is not under an allowed directory".
        """
        if self._allow is not None and not is_under(Path(filename), self._allow):
            log.warning("refused to open %s: not under an allowed directory", filename)
            raise QMPError(f"Path '{filename}' is not under an allowed directory")

    async def create_file(self, filename: str, size: int, preallocation: str = "off") -> None:
        """``blockdev-create`` for the ``file`` driver, with the allow-path check.

        :raise QMPError: QEMU's texts, e.g. "Could not create '%s': ...".
        """
        from .create import create_file

        self.check_path(filename)
        await create_file(filename, size, preallocation, executor=self.executor)

    def close(self) -> None:
        """Close every node and, if the graph owns it, the I/O thread pool."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes():
            node.close()
        self._nodes.clear()
        if self._own_executor:
            self.executor.shutdown(wait=True)
