"""Job-starting commands (backup, mirror, create, transaction).

Thin handlers over :class:`~qmpjobd.blockjobs.BlockJobService`. The ones
that drain jobs or create files return a coroutine; the session awaits it
before the reply, so creation events come first.
"""

from __future__ import annotations

from typing import Any

from ..block import BlockGraph
from ..blockjobs import BlockJobService
from ..jobs import JobManager
from . import Handler, SessionControl


def blockjob_commands(jobs: JobManager, graph: BlockGraph) -> list[tuple[str, Handler]]:
    service = BlockJobService(jobs, graph)

    async def blockdev_backup(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.blockdev_backup(args)
        return {}

    async def drive_backup(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.drive_backup(args)
        return {}

    async def transaction(session: SessionControl, args: dict[str, Any]) -> Any:
        properties = args.get("properties") or {}
        grouped = properties.get("completion-mode", "individual") == "grouped"
        actions = [(action["type"], action["data"]) for action in args["actions"]]
        await service.transaction(actions, grouped=grouped)
        return {}

    def blockdev_mirror(session: SessionControl, args: dict[str, Any]) -> Any:
        service.blockdev_mirror(args)
        return {}

    async def drive_mirror(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.drive_mirror(args)
        return {}

    def blockdev_create(session: SessionControl, args: dict[str, Any]) -> Any:
        service.blockdev_create(args["job-id"], args["options"])
        return {}

    return [
        ("blockdev-create", blockdev_create),
        ("transaction", transaction),
        ("drive-mirror", drive_mirror),
        ("blockdev-mirror", blockdev_mirror),
        ("drive-backup", drive_backup),
        ("blockdev-backup", blockdev_backup),
    ]
