"""Job commands: the ``job-*`` and ``block-job-*`` verbs and the two queries.

Thin handlers: find the job the way the command family finds it (``job-*``
by ``id`` with GenericError "Job not found"; ``block-job-*`` by ``device``,
or ``id`` for finalize and dismiss, with DeviceNotActive), then call the
engine, which checks the verb table and raises QEMU's errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import blockjobs
from ..blockjobs import BlockJobInfo
from ..jobs import JobInfo, JobManager
from . import Handler, SessionControl


def _wire(record: JobInfo | BlockJobInfo) -> dict[str, Any]:
    """A query record as QMP members, in QEMU's order; optional ones only when set."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in ("error", "actively_synced") and value is None:
            continue
        out[f.name.replace("_", "-")] = value
    return out


def job_commands(jobs: JobManager, *, actively_synced: bool = False) -> list[tuple[str, Handler]]:
    """The job commands; *actively_synced*: query-block-jobs' mirror entries
    carry ``actively-synced`` (QEMU 8.2)."""

    def query_jobs(session: SessionControl, args: dict[str, Any]) -> Any:
        return [_wire(info) for info in jobs.query_jobs()]

    def query_block_jobs(session: SessionControl, args: dict[str, Any]) -> Any:
        infos = blockjobs.query_block_jobs(jobs, actively_synced=actively_synced)
        return [_wire(info) for info in infos]

    def job_pause(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.pause(jobs.find(args["id"]))
        return {}

    def job_resume(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.resume(jobs.find(args["id"]))
        return {}

    def job_cancel(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.cancel(jobs.find(args["id"]), force=True)
        return {}

    def job_complete(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.complete(jobs.find(args["id"]))
        return {}

    def job_finalize(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.finalize(jobs.find(args["id"]))
        return {}

    def job_dismiss(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.dismiss(jobs.find(args["id"]))
        return {}

    def block_job_set_speed(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.set_speed(blockjobs.find_block_job(jobs, args["device"]), args["speed"])
        return {}

    def block_job_cancel(session: SessionControl, args: dict[str, Any]) -> Any:
        device = args["device"]
        blockjobs.block_job_cancel(
            jobs, blockjobs.find_block_job(jobs, device), device, args.get("force", False)
        )
        return {}

    def block_job_pause(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.pause(blockjobs.find_block_job(jobs, args["device"]))
        return {}

    def block_job_resume(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.resume(blockjobs.find_block_job(jobs, args["device"]))
        return {}

    def block_job_complete(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.complete(blockjobs.find_block_job(jobs, args["device"]))
        return {}

    def block_job_finalize(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.finalize(blockjobs.find_block_job(jobs, args["id"]))
        return {}

    def block_job_change(session: SessionControl, args: dict[str, Any]) -> Any:
        # QEMU does not check the discriminator against the job: a mirror
        # given another type reads the absent mirror branch as background.
        copy_mode = args["copy-mode"] if args["type"] == "mirror" else "background"
        jobs.change(blockjobs.find_block_job(jobs, args["id"]), copy_mode)
        return {}

    def block_job_dismiss(session: SessionControl, args: dict[str, Any]) -> Any:
        jobs.dismiss(blockjobs.find_block_job(jobs, args["id"]))
        return {}

    # Registration order follows QEMU's, so query-commands lists them alike.
    return [
        ("query-block-jobs", query_block_jobs),
        ("block-job-set-speed", block_job_set_speed),
        ("block-job-change", block_job_change),
        ("block-job-cancel", block_job_cancel),
        ("block-job-pause", block_job_pause),
        ("block-job-resume", block_job_resume),
        ("block-job-complete", block_job_complete),
        ("block-job-dismiss", block_job_dismiss),
        ("block-job-finalize", block_job_finalize),
        ("job-pause", job_pause),
        ("job-resume", job_resume),
        ("job-cancel", job_cancel),
        ("job-complete", job_complete),
        ("job-dismiss", job_dismiss),
        ("job-finalize", job_finalize),
        ("query-jobs", query_jobs),
    ]
