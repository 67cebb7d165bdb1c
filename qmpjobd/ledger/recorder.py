"""What the ledger hears: job status changes (a :class:`JobListener`) and the
nodes the monitor adds and deletes (a graph observer).

Must not import: sockets, wire, protocol, session, server, commands, block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..jobs import Job, JobListener, JobRecord, JobStatus, record_of
from .store import Ledger


class Recorder(JobListener):
    """Keeps the ledger's job records and node list up to date.

    :param nodes_of: the names of the nodes a job uses (the composition root
        knows block jobs; the ledger does not).
    """

    def __init__(self, ledger: Ledger, nodes_of: Callable[[Job], tuple[str, ...]]) -> None:
        self._ledger = ledger
        self._nodes_of = nodes_of
        #: the nodes of each live job (they do not change during its life)
        self._nodes: dict[str, tuple[str, ...]] = {}
        ledger.record_of = self.record_of

    def job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        if new is JobStatus.NULL:
            self._nodes.pop(job.id, None)
            self._ledger.delete_job(job.id)
        else:
            # The record is built once per commit, however often it changed.
            self._ledger.put_job(job)

    def record_of(self, job: Job) -> JobRecord:
        """``jobs.record_of`` with the job's nodes, looked up once per job."""
        job_id = job.id
        nodes = self._nodes.get(job_id)
        if nodes is None:
            nodes = self._nodes[job_id] = self._nodes_of(job)
        return record_of(job, nodes)

    def node_added(self, node_name: str, options: dict[str, Any]) -> None:
        self._ledger.put_node(node_name, options)

    def node_deleted(self, node_name: str) -> None:
        self._ledger.delete_node(node_name)
