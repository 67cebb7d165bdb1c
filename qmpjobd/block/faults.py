"""Injected faults: fail a node's next read, write or flush without a blkdebug graph.

A :class:`NodeFaults` hangs on a :class:`~qmpjobd.block.nodes.BlockNode`
(``node.faults``) only once a fault was asked for; the node's I/O entry
points ask it before every request (``write-zeroes`` counts as a write).
A fault names the operation, optionally a byte offset the request must
cover and the Nth matching request (counted from when the fault was set,
1 = the next one), the errno to fail with, and whether it fires once (then
it is gone) or for every matching request from the Nth on.

A leaf of the block package: no imports of ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

FaultOp = Literal["read", "write", "flush"]


@dataclass(eq=False)
class Fault:
    number: int
    node: str
    op: FaultOp
    errno: int
    offset: int | None = None
    nth: int = 1
    always: bool = False
    #: matching requests seen so far, and how many of them failed
    seen: int = 0
    fired: int = 0


@dataclass
class NodeFaults:
    """The faults of one node, in the order they were set."""

    faults: list[Fault] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def check(self, op: FaultOp, offset: int, length: int) -> None:
        """Count the request against every fault; fail it with the first that fires.

        :raise OSError: the fault's errno.
        """
        failing: Fault | None = None
        for fault in list(self.faults):
            if fault.op != op:
                continue
            if fault.offset is not None and not (offset <= fault.offset < offset + length):
                continue
            fault.seen += 1
            fires = fault.seen >= fault.nth if fault.always else fault.seen == fault.nth
            if fires and failing is None:
                failing = fault
        if failing is not None:
            failing.fired += 1
            if not failing.always:
                self.faults.remove(failing)
            raise OSError(failing.errno, os.strerror(failing.errno))
