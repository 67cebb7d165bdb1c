"""Faults on block nodes, set and cleared by number (the checks live in
:mod:`qmpjobd.block.faults`, at the nodes' I/O entry points)."""

from __future__ import annotations

import errno as errno_mod
from typing import Any, cast

from ..block import BlockGraph
from ..block.faults import Fault, FaultOp, NodeFaults
from ..errors import QMPError


class Faults:
    def __init__(self, graph: BlockGraph) -> None:
        self.graph = graph
        self._counter = 0

    def add(
        self,
        node_name: str,
        op: str,
        *,
        errno: int = errno_mod.EIO,
        offset: int | None = None,
        nth: int = 1,
        always: bool = False,
    ) -> Fault:
        """:raise QMPError: unknown node, or arguments out of range."""
        node = self.graph.lookup(node_name)
        if errno < 1:
            raise QMPError("Parameter 'errno' expects a positive value")
        if nth < 1:
            raise QMPError("Parameter 'nth' expects a positive value")
        if offset is not None:
            if op == "flush":
                raise QMPError("A flush has no offset")
            if offset < 0:
                raise QMPError("Parameter 'offset' expects a non-negative value")
        self._counter += 1
        fault = Fault(self._counter, node.node_name, cast(FaultOp, op), errno, offset, nth, always)
        if node.faults is None:
            node.faults = NodeFaults()
        node.faults.faults.append(fault)
        return fault

    def _all(self) -> list[Fault]:
        out: list[Fault] = []
        for node in self.graph.nodes():
            if node.faults:
                out.extend(node.faults.faults)
        return sorted(out, key=lambda f: f.number)

    def clear(self, node_name: str | None = None, number: int | None = None) -> None:
        """Remove faults: every one, a node's, or one by number.

        :raise QMPError: unknown node, or no fault of that number.
        """
        if node_name is not None:
            node_name = self.graph.lookup(node_name).node_name
        found = False
        for node in self.graph.nodes():
            if node.faults is None or (node_name is not None and node.node_name != node_name):
                continue
            keep = [f for f in node.faults.faults if number is not None and f.number != number]
            found = found or len(keep) != len(node.faults.faults)
            node.faults.faults[:] = keep
        if number is not None and not found:
            raise QMPError(f"Fault {number} not found")

    def query(self) -> list[dict[str, Any]]:
        out = []
        for f in self._all():
            entry: dict[str, Any] = {"fault": f.number, "node": f.node, "op": f.op}
            if f.offset is not None:
                entry["offset"] = f.offset
            entry.update(nth=f.nth, errno=f.errno, always=f.always, seen=f.seen, fired=f.fired)
            out.append(entry)
        return out
