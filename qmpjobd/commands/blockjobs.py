"""Job-starting commands (backup, mirror, create, transaction).

Each handler turns the command's arguments (already checked against the
schema) into a typed spec and hands it to
:class:`~qmpjobd.blockjobs.BlockJobService`; this is the only place that
knows these commands' QMP member names. The handlers that drain jobs or
create files return a coroutine; the session awaits it before the reply,
so creation events come first.
"""

from __future__ import annotations

from typing import Any

from ..block.drivers.qcow2 import Qcow2CreateOptions
from ..blockjobs import BlockJobService
from ..blockjobs.specs import (
    AbortAction,
    BackupSpec,
    CommitSpec,
    CreateSpec,
    JobSettings,
    MirrorSpec,
    NewImage,
    StreamSpec,
    TransactionSpec,
)
from . import Handler, SessionControl


def _settings(args: dict[str, Any]) -> JobSettings:
    return JobSettings(
        job_id=args.get("job-id", ""),
        speed=args.get("speed", 0),
        auto_finalize=args.get("auto-finalize", True),
        auto_dismiss=args.get("auto-dismiss", True),
        on_source_error=args.get("on-source-error", "report"),
        on_target_error=args.get("on-target-error", "report"),
    )


def _new_image(args: dict[str, Any]) -> NewImage:
    return NewImage(args["target"], args.get("format"), args.get("mode", "absolute-paths"))


def backup_spec(args: dict[str, Any], *, drive: bool) -> BackupSpec:
    """``blockdev-backup`` (``drive=False``) or ``drive-backup`` arguments."""
    perf = args.get("x-perf") or {}
    return BackupSpec(
        device=args["device"],
        sync=args["sync"],
        job=_settings(args),
        target=None if drive else args["target"],
        new_image=_new_image(args) if drive else None,
        bitmap=args.get("bitmap"),
        bitmap_mode=args.get("bitmap-mode"),
        compress=args.get("compress", False),
        max_workers=perf.get("max-workers", 64),
        max_chunk=perf.get("max-chunk", 0),
        min_cluster_size=perf.get("min-cluster-size", 0),
        discard_source=args.get("discard-source", False),
    )


def mirror_spec(args: dict[str, Any], *, drive: bool) -> MirrorSpec:
    """``blockdev-mirror`` (``drive=False``) or ``drive-mirror`` arguments."""
    return MirrorSpec(
        device=args["device"],
        sync=args["sync"],
        job=_settings(args),
        target=None if drive else args["target"],
        new_image=_new_image(args) if drive else None,
        node_name=args.get("node-name"),
        replaces=args.get("replaces"),
        granularity=args.get("granularity", 0),
        buf_size=args.get("buf-size", 0),
        copy_mode=args.get("copy-mode", "background"),
    )


def transaction_spec(args: dict[str, Any]) -> TransactionSpec:
    properties = args.get("properties") or {}
    actions: list[BackupSpec | AbortAction] = []
    for action in args["actions"]:
        kind = action["type"]
        if kind == "abort":
            actions.append(AbortAction())
        else:
            actions.append(backup_spec(action["data"], drive=kind == "drive-backup"))
    return TransactionSpec(
        tuple(actions), grouped=properties.get("completion-mode", "individual") == "grouped"
    )


def create_spec(args: dict[str, Any]) -> CreateSpec:
    options = args["options"]
    if options["driver"] == "qcow2":
        return CreateSpec(
            job_id=args["job-id"],
            driver="qcow2",
            filename="",
            size=options["size"],
            file=options["file"],
            qcow2=Qcow2CreateOptions(
                size=options["size"],
                version=3 if options.get("version", "v3") == "v3" else 2,
                cluster_size=options.get("cluster-size", 65536),
                backing_file=options.get("backing-file"),
                backing_fmt=options.get("backing-fmt"),
                lazy_refcounts=options.get("lazy-refcounts", False),
                refcount_bits=options.get("refcount-bits", 16),
                preallocation=options.get("preallocation", "off"),
            ),
        )
    return CreateSpec(
        job_id=args["job-id"],
        driver=options["driver"],
        filename=options.get("filename", ""),
        size=options.get("size", 0),
        preallocation=options.get("preallocation", "off"),
    )


def stream_spec(args: dict[str, Any]) -> StreamSpec:
    return StreamSpec(
        device=args["device"],
        job=_settings(args),
        base=args.get("base"),
        base_node=args.get("base-node"),
        bottom=args.get("bottom"),
        backing_file=args.get("backing-file"),
        on_error=args.get("on-error", "report"),
    )


def commit_spec(args: dict[str, Any]) -> CommitSpec:
    return CommitSpec(
        device=args["device"],
        job=_settings(args),
        job_id_given="job-id" in args,
        base=args.get("base"),
        base_node=args.get("base-node"),
        top=args.get("top"),
        top_node=args.get("top-node"),
        backing_file=args.get("backing-file"),
        on_error=args.get("on-error", "report"),
    )


def blockjob_commands(service: BlockJobService) -> list[tuple[str, Handler]]:
    async def blockdev_backup(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.backup(backup_spec(args, drive=False))
        return {}

    async def drive_backup(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.backup(backup_spec(args, drive=True))
        return {}

    async def transaction(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.transaction(transaction_spec(args))
        return {}

    def blockdev_mirror(session: SessionControl, args: dict[str, Any]) -> Any:
        service.blockdev_mirror(mirror_spec(args, drive=False))
        return {}

    async def drive_mirror(session: SessionControl, args: dict[str, Any]) -> Any:
        await service.drive_mirror(mirror_spec(args, drive=True))
        return {}

    def block_stream(session: SessionControl, args: dict[str, Any]) -> Any:
        service.stream(stream_spec(args))
        return {}

    def block_commit(session: SessionControl, args: dict[str, Any]) -> Any:
        service.commit(commit_spec(args))
        return {}

    def blockdev_create(session: SessionControl, args: dict[str, Any]) -> Any:
        service.create(create_spec(args))
        return {}

    return [
        ("blockdev-create", blockdev_create),
        ("block-stream", block_stream),
        ("block-commit", block_commit),
        ("transaction", transaction),
        ("drive-mirror", drive_mirror),
        ("blockdev-mirror", blockdev_mirror),
        ("drive-backup", drive_backup),
        ("blockdev-backup", blockdev_backup),
    ]
