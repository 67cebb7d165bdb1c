#!/usr/bin/env python3
"""Back up an image file to another file through a QMP daemon.

Usage: python examples/backup.py SOCKET SOURCE TARGET

A management-style client, written for QEMU's QMP and working the same
against qmpjobd or qemu-storage-daemon: it opens SOURCE as a block node,
creates TARGET with ``blockdev-create`` (a ``create`` job), starts the
backup in a ``transaction`` with ``completion-mode: grouped``, waits for
each job's ``JOB_STATUS_CHANGE`` events (redrawing a progress bar from
``query-jobs`` meanwhile: progress has no event), and cleans up its nodes
and jobs. Exits with status 0 when the backup succeeded, 1 otherwise.

Needs ``qemu.qmp``: ``pip install -e '.[examples]'``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient

#: How often the progress bar is redrawn while a job runs.
BAR_REFRESH_SECONDS = 0.5
BAR_WIDTH = 40


def bar(done: int, total: int) -> str:
    fraction = done / total if total else 1.0
    filled = int(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%"


async def job_info(qmp: QMPClient, job_id: str) -> dict[str, Any]:
    jobs: Any = await qmp.execute("query-jobs")
    for job in jobs:
        if job["id"] == job_id:
            return dict(job)
    raise RuntimeError(f"job {job_id} disappeared")


async def wait_concluded(
    qmp: QMPClient, events: EventListener, job_id: str, *, show: bool
) -> dict[str, Any]:
    """Wait for the job's JOB_STATUS_CHANGE to ``concluded``; draw a bar meanwhile."""
    while True:
        if show:
            info = await job_info(qmp, job_id)
            print(f"\r{bar(info['current-progress'], info['total-progress'])}", end="", flush=True)
        try:
            event = await asyncio.wait_for(events.get(), BAR_REFRESH_SECONDS if show else None)
        except TimeoutError:
            continue
        data = event["data"]
        if data["id"] == job_id and data["status"] == "concluded":
            info = await job_info(qmp, job_id)
            if show:
                print(f"\r{bar(info['current-progress'], info['total-progress'])}")
            return info


async def backup(socket: str, source: str, target: str) -> int:
    qmp = QMPClient("backup-example")
    await qmp.connect(socket)
    # Listen before starting any job, so that no event of ours is missed.
    events = EventListener("JOB_STATUS_CHANGE")
    qmp.register_listener(events)
    added: list[str] = []
    try:
        await qmp.execute(
            "blockdev-add",
            {"driver": "file", "node-name": "bk-src", "filename": source, "read-only": True},
        )
        added.append("bk-src")
        nodes: Any = await qmp.execute("query-named-block-nodes")
        size = next(n["image"]["virtual-size"] for n in nodes if n["node-name"] == "bk-src")

        # The target: a new file of the source's size (a create job).
        await qmp.execute(
            "blockdev-create",
            {
                "job-id": "bk-create",
                "options": {"driver": "file", "filename": target, "size": size},
            },
        )
        created = await wait_concluded(qmp, events, "bk-create", show=False)
        await qmp.execute("job-dismiss", {"id": "bk-create"})
        if "error" in created:
            print(f"cannot create {target}: {created['error']}", file=sys.stderr)
            return 1
        await qmp.execute(
            "blockdev-add", {"driver": "file", "node-name": "bk-tgt", "filename": target}
        )
        added.append("bk-tgt")

        await qmp.execute(
            "transaction",
            {
                "actions": [
                    {
                        "type": "blockdev-backup",
                        "data": {
                            "job-id": "bk-job",
                            "device": "bk-src",
                            "target": "bk-tgt",
                            "sync": "full",
                            "auto-dismiss": False,
                        },
                    }
                ],
                "properties": {"completion-mode": "grouped"},
            },
        )
        result = await wait_concluded(qmp, events, "bk-job", show=True)
        await qmp.execute("job-dismiss", {"id": "bk-job"})
        if "error" in result:
            print(f"backup failed: {result['error']}", file=sys.stderr)
            return 1
        print(f"backed up {result['total-progress']} bytes of {source} to {target}")
        return 0
    except ExecuteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for node in reversed(added):
            try:
                await qmp.execute("blockdev-del", {"node-name": node})
            except ExecuteError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        qmp.remove_listener(events)
        await qmp.disconnect()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    return asyncio.run(backup(argv[1], argv[2], argv[3]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
