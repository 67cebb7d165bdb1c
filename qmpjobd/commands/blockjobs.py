"""Job-starting commands (backup, mirror, create, transaction)."""

from __future__ import annotations

from ..block import BlockGraph
from ..jobs import JobManager
from . import Handler


def blockjob_commands(jobs: JobManager, graph: BlockGraph) -> list[tuple[str, Handler]]:
    return []
