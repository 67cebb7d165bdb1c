"""What the ledger hears: job status changes (a :class:`JobListener`) and the
nodes the monitor adds and deletes (a graph observer).

Must not import: sockets, wire, protocol, session, server, commands, block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..jobs import Job, JobListener, JobStatus, record_of
from .store import Ledger


class Recorder(JobListener):
    """Keeps the ledger's job records and node list up to date.

    :param nodes_of: the names of the nodes a job uses (the composition root
        knows block jobs; the ledger does not).
    """

    def __init__(self, ledger: Ledger, nodes_of: Callable[[Job], tuple[str, ...]]) -> None:
        self._ledger = ledger
        self._nodes_of = nodes_of

    def job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        if new is JobStatus.NULL:
            self._ledger.delete_job(job.id)
        else:
            self._ledger.put_job(record_of(job, self._nodes_of(job)))

    def node_added(self, node_name: str, options: dict[str, Any]) -> None:
        self._ledger.put_node(node_name, options)

    def node_deleted(self, node_name: str) -> None:
        self._ledger.delete_node(node_name)
