"""Guest writes: write a pattern to a range of a node as a guest would.

The write goes through the node's I/O entry point (so faults apply), then
every mirror whose source is that node hears of it: a READY mirror really
has new dirty data to copy, and a write-blocking mirror writes it to its
target before the command returns.
"""

from __future__ import annotations

import os

from ..block import BlockGraph
from ..blockjobs.drivers import MirrorDriver
from ..errors import QMPError
from ..jobs import JobManager


class GuestWriter:
    def __init__(self, jobs: JobManager, graph: BlockGraph) -> None:
        self.jobs = jobs
        self.graph = graph

    async def write(self, node_name: str, offset: int, length: int, pattern: int) -> None:
        """:raise QMPError: unknown node, bad range or pattern, or the write failed."""
        node = self.graph.lookup(node_name)
        if not 0 <= pattern <= 255:
            raise QMPError("Parameter 'pattern' expects a value in range [0, 255]")
        if offset < 0 or length < 1 or offset + length > node.size:
            raise QMPError(
                f"Guest write [{offset}, {offset + length}) is outside node "
                f"'{node.node_name}' (size {node.size})"
            )
        data = bytes([pattern]) * length
        try:
            await node.write(offset, data)
            for job in self.jobs.jobs_newest_first():
                driver = job.driver
                if isinstance(driver, MirrorDriver) and driver.source is node:
                    await driver.guest_wrote(job, offset, data)
        except OSError as exc:
            code = exc.errno or 5
            raise QMPError(f"Guest write failed: {exc.strerror or os.strerror(code)}") from None
