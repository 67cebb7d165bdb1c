"""The block graph: names, references, permissions; ``blockdev-add``, ``blockdev-del``.

The command layer has already checked the arguments against the JSON Schema
(types, required and unknown members, enum values); each driver checks its
own options (``block/drivers``), in QEMU 7.2's order and with its texts.
The graph knows no driver by name: it looks the ``driver`` member up in the
registry and hands the driver an :class:`~qmpjobd.block.node.Opening`.

* A node gets its name when its driver calls ``name()``: a format driver
  opens its ``file`` child first and is named after it, a protocol or filter
  driver is named first. Unnamed nested children get generated names
  ``#block<counter><two random digits>``; the counter also advances for
  nodes that then fail to open, like QEMU's.
* ``query-named-block-nodes`` lists nodes in the reverse order of naming.
* Children given as options are implicit: they belong to their parent, go
  away with it, and cannot be deleted by ``blockdev-del``.
* If any node of a tree fails to open, every node the tree opened is undone.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ..errors import QMPError
from . import info
from .drivers import DRIVERS
from .node import BlockNode, IOContext, NodeReference

DEFAULT_IO_WORKERS = 4
_NODE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_NODE_NAME_MAX = 31

log = logging.getLogger(__name__)


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path``, with symlinks resolved, lies inside one of ``roots``."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in roots)


class _Opening:
    """One node being opened (the graph's side of :class:`~qmpjobd.block.node.Opening`)."""

    def __init__(self, graph: BlockGraph, options: dict[str, Any], opened: list[BlockNode]) -> None:
        self._graph = graph
        self.options = options
        self.read_only = bool(options.get("read-only", False))
        self.io = graph._ctx
        self.children: dict[str, BlockNode] = {}
        self._opened = opened
        self._name: str | None = None
        self.order = 0

    @property
    def node_name(self) -> str:
        if self._name is None:
            raise RuntimeError("the driver built its node before naming it")
        return self._name

    def name(self) -> str:
        if self._name is not None:
            raise RuntimeError("a node is named once")
        self._name, self.order = self._graph._assign_name(self.options)
        if self.options.get("detect-zeroes") == "unmap" and self.options.get("discard") != "unmap":
            raise QMPError(
                "setting detect-zeroes to unmap is not allowed "
                "without setting discard operation to unmap"
            )
        return self._name

    def child(self, role: str, ref: str | dict[str, Any] | None = None) -> BlockNode:
        if role in self.children:
            raise RuntimeError(f"child {role!r} taken twice")
        if ref is None:
            ref = self.options[role]
        graph = self._graph
        if isinstance(ref, str):
            node = graph.lookup(ref)
        else:
            node = graph._open(ref, self.read_only, self._opened)
            if "discard" not in ref:
                node.unmap = DRIVERS[self.options["driver"]].child_unmap(role, self.options)
        node.refcnt += 1
        self.children[role] = node
        return node

    def check_path(self, filename: str) -> None:
        self._graph.check_path(filename)


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
    :param show_active: query-named-block-nodes shows each node's ``active``
        (QEMU 10.0).
    :param protocol_info: query-named-block-nodes shows a protocol node's
        ``format-specific`` (QEMU 8.0's ImageInfoSpecificFile).
    """

    def __init__(
        self,
        *,
        allow_paths: Sequence[Path] | None = None,
        executor: Executor | None = None,
        rng: Callable[[], int] | None = None,
        show_active: bool = False,
        protocol_info: bool = False,
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
        self._show_active = show_active
        self._protocol_info = protocol_info
        #: Told of each change of the graph, with the number of write-locked
        #: sections QEMU 10.0 opens for it (per child attached, as the node's
        #: driver says; one per node closed).
        self.on_change: Callable[[int], None] = lambda sections: None
        #: Whether a node has a parent outside the graph's own nodes (a job's
        #: filter); the job service says.
        self.has_filter_parent: Callable[[BlockNode], bool] = lambda node: False
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

    def query_named_block_nodes(self, *, flat: bool = False) -> list[dict[str, Any]]:
        """``query-named-block-nodes``: BlockDeviceInfo of every node, newest
        first; ``flat`` leaves out what lies below each node."""
        return [
            info.device_info(
                node, show_active=self._show_active, protocol_info=self._protocol_info, flat=flat
            )
            for node in self.nodes()
        ]

    # -- blockdev-set-active ----------------------------------------------

    def set_active(self, node_name: str | None, active: bool) -> None:
        """``blockdev-set-active``: one node and what is below it, or every node.

        :raise QMPError: no such node, or "Node has active parent node" when
            a node still used by an active parent is inactivated.
        """
        if node_name is None:
            for each in self.nodes():
                each.active = active
            return
        node = self.get(node_name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{node_name}'")
        if active:
            self._activate(node)
            return
        if self.has_filter_parent(node) or any(p.active for p in self._parents(node)):
            raise QMPError("Node has active parent node")
        self._inactivate(node)

    def _parents(self, node: BlockNode) -> list[BlockNode]:
        return [n for n in self._nodes.values() if node in n.children.values()]

    def _activate(self, node: BlockNode) -> None:
        node.active = True
        for child in node.children.values():
            self._activate(child)

    def _inactivate(self, node: BlockNode) -> None:
        node.active = False
        for child in node.children.values():
            if not self.has_filter_parent(child) and not any(
                p.active for p in self._parents(child)
            ):
                self._inactivate(child)

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

    def generate_name(self) -> str:
        """QEMU's name for a node given none: ``#block``, a counter, two random digits."""
        name = f"#block{self._id_counter}{self._rng() % 100:02d}"
        self._id_counter += 1
        return name

    def _assign_name(self, options: dict[str, Any]) -> tuple[str, int]:
        """Name a node being opened and give it its place in the node list.

        The name is reserved at once, so a nested child cannot take it.
        """
        name: str | None = options.get("node-name")
        if name is None:
            name = self.generate_name()
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

    def _open(
        self, options: dict[str, Any], parent_ro: bool | None, opened: list[BlockNode]
    ) -> BlockNode:
        options = dict(options)  # the node keeps its options; the caller's dict stays as given
        if "read-only" not in options and parent_ro is not None:
            options["read-only"] = parent_ro
        driver = options["driver"]
        cls = DRIVERS.get(driver)
        if cls is None:
            raise QMPError(f"Parameter 'driver' does not accept value '{driver}'")
        opening = _Opening(self, options, opened)
        try:
            node = cls.open(opening)
            if node.node_name != opening.node_name or node.children != opening.children:
                node.close()
                raise RuntimeError(f"{cls.__name__}.open built its node before taking all of it")
        except BaseException:
            for child in opening.children.values():
                child.refcnt -= 1
            raise
        self._pending.discard(node.node_name)
        node._order = opening.order
        self._nodes[node.node_name] = node
        for child in node.children.values():
            child.parent_count += 1
        opened.append(node)
        return node

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
            node = self._open(options, None, opened)
            self.on_change(sum(n.open_sections() for n in opened))
            return node
        except BaseException:
            self._pending.clear()
            for n in reversed(opened):
                self._forget(n)
                for child in n.children.values():
                    if child not in opened:
                        child.refcnt -= 1
            raise

    def set_child(self, parent: BlockNode, role: str, child: BlockNode | None) -> None:
        """Make ``child`` (or nothing) ``parent``'s child ``role`` (a job
        relinking a backing chain). The old child loses a reference and goes
        away if nothing else holds it, with its own children."""
        old = parent.children.get(role)
        if old is child:
            return
        if child is not None:
            child.refcnt += 1
            child.parent_count += 1
            parent.children[role] = child
        else:
            del parent.children[role]
        if old is not None:
            old.parent_count -= 1
            self._unref(old)

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
            raise QMPError(f"Node '{node_name}' is busy: {reason}")
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
            self.on_change(1)  # closing a node
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
