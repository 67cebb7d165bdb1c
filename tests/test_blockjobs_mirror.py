"""blockdev-mirror, drive-mirror and blockdev-create through real sockets.

Sequences and texts as recorded from qemu-storage-daemon 7.2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .support import RELEASE
from .support.blockjobs import J, JobClient, add_file, add_null, sha256, write_random

pytestmark = pytest.mark.timeout(20)
SIZE = 1000123
NODE = 1000448  # mirror progress counts bytes of the node


def info(job: str, length: int, offset: int | None = None) -> dict[str, Any]:
    return {
        "device": job,
        "len": length,
        "offset": length if offset is None else offset,
        "speed": 0,
        "type": "mirror",
    }


async def mirror_files(c: JobClient, tmp_path: Path) -> tuple[Path, Path]:
    src, tgt = tmp_path / "src.img", tmp_path / "tgt.img"
    write_random(src, SIZE)
    tgt.write_bytes(b"old" * 1000)
    os.truncate(tgt, SIZE)
    await add_file(c, "s", src)
    await add_file(c, "t", tgt)
    return src, tgt


async def start_ready(c: JobClient, job: str = "m", **extra: Any) -> None:
    await c.ok("blockdev-mirror", device="s", target="t", sync="full", **{"job-id": job}, **extra)
    await c.wait_for("BLOCK_JOB_READY", info(job, NODE))
    assert c.take() == [
        J("created", job),
        J("running", job),
        J("ready", job),
        ("BLOCK_JOB_READY", info(job, NODE)),
    ]


async def test_mirror_ready_then_complete(c: JobClient, tmp_path: Path) -> None:
    src, tgt = await mirror_files(c, tmp_path)
    await start_ready(c)
    [job] = await c.ok("query-block-jobs")
    assert (job["status"], job["ready"], job["busy"], job["len"]) == ("ready", True, False, NODE)
    # pause in READY: standby, and back
    await c.ok("job-pause", id="m")
    await c.wait_for("J", "standby", "m")
    await c.ok("job-resume", id="m")
    await c.wait_for("J", "ready", "m", count=1)
    assert c.take() == [J("standby", "m"), J("ready", "m")]
    await c.ok("job-complete", id="m")
    await c.wait_for("J", "null", "m")
    assert c.take() == [
        J("waiting", "m"),
        J("pending", "m"),
        ("BLOCK_JOB_COMPLETED", info("m", NODE)),
        J("concluded", "m"),
        J("null", "m"),
    ]
    assert sha256(tgt, SIZE) == sha256(src)
    await c.ok("blockdev-del", **{"node-name": "t"})


async def test_soft_cancel_in_ready_completes(c: JobClient, tmp_path: Path) -> None:
    await mirror_files(c, tmp_path)
    await start_ready(c)
    await c.ok("block-job-cancel", device="m")
    await c.wait_for("J", "null", "m")
    assert c.take() == [
        J("waiting", "m"),
        J("pending", "m"),
        ("BLOCK_JOB_COMPLETED", info("m", NODE)),
        J("concluded", "m"),
        J("null", "m"),
    ]


async def test_force_cancel_in_ready_and_standby(c: JobClient, tmp_path: Path) -> None:
    await mirror_files(c, tmp_path)
    await start_ready(c)
    await c.ok("block-job-cancel", device="m", force=True)
    await c.wait_for("J", "null", "m")
    assert c.take() == [
        J("aborting", "m"),
        ("BLOCK_JOB_CANCELLED", info("m", NODE)),
        J("concluded", "m"),
        J("null", "m"),
    ]
    await start_ready(c, "m6")
    await c.ok("block-job-pause", device="m6")
    await c.wait_for("J", "standby", "m6")
    assert await c.error("block-job-cancel", device="m6") == (
        "GenericError",
        "The block job for device 'm6' is currently paused",
    )
    await c.ok("job-cancel", id="m6")
    await c.wait_for("J", "null", "m6")
    assert c.take() == [
        J("standby", "m6"),
        J("ready", "m6"),
        J("aborting", "m6"),
        ("BLOCK_JOB_CANCELLED", info("m6", NODE)),
        J("concluded", "m6"),
        J("null", "m6"),
    ]


async def test_complete_before_ready_is_refused(c: JobClient) -> None:
    await add_null(c, "a", 64 << 20)
    await add_null(c, "b", 64 << 20)
    # rate limited: still copying
    await c.ok(
        "blockdev-mirror", device="a", target="b", sync="full", speed=1 << 20, **{"job-id": "m"}
    )
    assert await c.error("job-complete", id="m") == (
        "GenericError",
        "Job 'm' in state 'running' cannot accept command verb 'complete'",
    )
    await c.ok("block-job-cancel", device="m")  # not READY: a force cancel
    await c.wait_for("J", "null", "m")
    assert [e[0] for e in c.take()][-4:] == ["J", "BLOCK_JOB_CANCELLED", "J", "J"]


async def test_mirror_target_write_error_reports(c: JobClient, tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    write_random(src, SIZE)
    await add_file(c, "s", src)
    await c.ok(
        "blockdev-add",
        driver="raw",
        file={
            "driver": "blkdebug",
            "inject-error": [{"event": "write_aio"}],
            "image": {"driver": "null-co", "size": NODE},
        },
        **{"node-name": "t"},
    )
    await c.ok("blockdev-mirror", device="s", target="t", sync="full", **{"job-id": "m"})
    await c.wait_for("J", "null", "m")
    # QEMU 7.2 reports once per failed in-flight request (two here); qmpjobd has one.
    assert c.take() == [
        J("created", "m"),
        J("running", "m"),
        ("BLOCK_JOB_ERROR", {"device": "m", "operation": "write", "action": "report"}),
        J("aborting", "m"),
        ("BLOCK_JOB_COMPLETED", {**info("m", NODE, 0), "error": "Input/output error"}),
        J("concluded", "m"),
        J("null", "m"),
    ]


async def test_blockdev_mirror_argument_errors(c: JobClient) -> None:
    for name in ("n3", "n4"):
        await add_null(c, name)

    async def err(**args: Any) -> str:
        base = {"job-id": "a", "device": "n3", "target": "n4", "sync": "full"}
        reply = await c.cmd("blockdev-mirror", **{**base, **args})
        assert reply["error"]["class"] == "GenericError"
        desc: str = reply["error"]["desc"]
        return desc

    assert await err(device="nope") == "Cannot find device='nope' nor node-name='nope'"
    assert await err(target="nope") == "Cannot find device='nope' nor node-name='nope'"
    assert await err(target="n3") == "Can't mirror node into itself"
    assert await err(sync="incremental") == "Sync mode 'incremental' not supported"
    assert await err(sync="top", granularity=1000) == (
        "Parameter 'granularity' expects a power of 2"
    )
    for granularity in (256, 1 << 27):
        assert await err(granularity=granularity) == (
            "Parameter 'granularity' expects a value in range [512B, 64MB]"
        )
    assert await err(**{"buf-size": -1}) == "Invalid parameter 'buf-size'"
    assert await err(**{"job-id": ""}) == "Invalid job ID ''"
    reply = await c.cmd("blockdev-mirror", device="n3", target="n4", sync="full")
    assert reply["error"]["desc"] == "Invalid job ID ''"
    assert await err(replaces="n9") == "Failed to find node with node-name='n9'"
    await add_null(c, "n1")
    assert await err(replaces="n1") == (
        "Cannot replace 'n1' by a node mirrored from 'n3', because it cannot be guaranteed "
        "that doing so would not lead to an abrupt change of visible data"
    )
    # order of checks
    assert await err(sync="incremental", granularity=1000) == (
        "Parameter 'granularity' expects a power of 2"
    )
    assert await err(sync="incremental", **{"buf-size": -1}) == (
        "Sync mode 'incremental' not supported"
    )
    assert await err(target="n3", speed=-1, **{"buf-size": -1}) == "Invalid parameter 'buf-size'"
    assert c.take() == []
    assert await err(speed=-1) == "Parameter 'speed' expects a non-negative value"
    assert c.take() == [J("created", "a"), J("null", "a")]
    # a node used by another node is not a root node
    await c.ok("blockdev-add", driver="raw", file="n4", **{"node-name": "r"})
    assert await err(device="n4", target="n3") == "Need a root block node"


async def test_drive_mirror(c: JobClient, tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    write_random(src, SIZE)
    await add_file(c, "s", src)
    await add_null(c, "n", 1 << 20)
    target = tmp_path / "dm.img"
    assert await c.error(
        "drive-mirror", device="s", target=str(target), sync="none", format="raw", **{"job-id": "x"}
    ) == ("GenericError", "Backing file not supported for file format 'raw'")
    # no pause blip for mirrors
    await c.ok("drive-mirror", device="s", target=str(target), sync="full", **{"job-id": "dm"})
    assert c.take() == [J("created", "dm"), J("running", "dm")]
    await c.wait_for("BLOCK_JOB_READY", info("dm", NODE))
    names = [node["node-name"] for node in await c.ok("query-named-block-nodes")]
    assert len(names) == 3 and names[0].startswith("#block")
    await c.ok("job-complete", id="dm")
    await c.wait_for("J", "null", "dm")
    assert sha256(target, SIZE) == sha256(src)
    assert [node["node-name"] for node in await c.ok("query-named-block-nodes")] == ["n", "s"]
    # a null source has nothing allocated: a new (zeroed) target needs no copy
    await c.ok(
        "drive-mirror",
        device="n",
        target=str(tmp_path / "z.img"),
        sync="full",
        format="raw",
        **{"job-id": "z", "node-name": "zt"},
    )
    await c.wait_for("BLOCK_JOB_READY", info("z", 0))
    assert await c.error("blockdev-del", **{"node-name": "zt"}) == (
        "GenericError",
        "Node zt is in use",
    )
    await c.ok("job-cancel", id="z")
    await c.wait_for("J", "null", "z")
    # an existing smaller target: the job fails
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4096))
    await c.ok(
        "drive-mirror",
        device="s",
        target=str(small),
        sync="full",
        mode="existing",
        **{"job-id": "sm"},
    )
    await c.wait_for("J", "null", "sm")
    assert c.take()[-4:] == [
        J("aborting", "sm"),
        (
            "BLOCK_JOB_COMPLETED",
            {**info("sm", 0), "error": "Source and target image have different sizes"},
        ),
        J("concluded", "sm"),
        J("null", "sm"),
    ]


# ------------------------------------------------------------ blockdev-create


async def test_blockdev_create(c: JobClient, tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    await c.ok(
        "blockdev-create",
        **{"job-id": "c1"},
        options={"driver": "file", "filename": str(path), "size": 65536},
    )
    await c.wait_for("J", "concluded", "c1")
    assert c.take() == [
        J("created", "c1"),
        J("running", "c1"),
        J("waiting", "c1"),
        J("pending", "c1"),
        J("concluded", "c1"),
    ]
    assert path.stat().st_size == 65536
    assert await c.ok("query-jobs") == [
        {
            "current-progress": 1,
            "status": "concluded",
            "total-progress": 1,
            "type": "create",
            "id": "c1",
        }
    ]
    assert await c.ok("query-block-jobs") == []
    await c.ok("job-dismiss", id="c1")
    await c.wait_for("J", "null", "c1")
    bad = tmp_path / "nodir" / "c.img"
    await c.ok(
        "blockdev-create",
        **{"job-id": "c2"},
        options={"driver": "file", "filename": str(bad), "size": 1},
    )
    await c.wait_for("J", "concluded", "c2")
    assert c.take() == [
        J("null", "c1"),
        J("created", "c2"),
        J("running", "c2"),
        J("aborting", "c2"),
        J("concluded", "c2"),
    ]
    assert await c.ok("query-jobs") == [
        {
            "current-progress": 1,
            "status": "concluded",
            "total-progress": 1,
            "type": "create",
            "id": "c2",
            "error": f"Could not create '{bad}': No such file or directory",
        }
    ]
    await c.ok("job-dismiss", id="c2")


async def test_blockdev_create_errors(c: JobClient, tmp_path: Path) -> None:
    path = str(tmp_path / "x.img")
    assert await c.error("blockdev-create", **{"job-id": "c"}, options={"driver": "null-co"}) == (
        "GenericError",
        "Driver does not support blockdev-create",
    )
    assert await c.error(
        "blockdev-create", options={"driver": "file", "filename": path, "size": 1}
    ) == (
        "GenericError",
        "Parameter 'job-id' is missing",
    )
    assert await c.error(
        "blockdev-create",
        **{"job-id": "c"},
        options={"driver": "file", "filename": path, "size": 1, "preallocation": "bogus"},
    ) == ("GenericError", "Parameter 'preallocation' does not accept value 'bogus'")
    await c.ok(
        "blockdev-create",
        **{"job-id": "c"},
        options={"driver": "file", "filename": path, "size": -1},
    )
    await c.wait_for("J", "concluded", "c")
    [job] = await c.ok("query-jobs")
    assert job["error"] == "Could not resize file: Invalid argument"
    assert c.take() == [
        J("created", "c"),
        J("running", "c"),
        J("aborting", "c"),
        J("concluded", "c"),
    ]


async def test_drive_targets_respect_allow_path(sock_dir: Path, tmp_path: Path) -> None:
    from qmpjobd.app import App, Config

    allowed = tmp_path / "ok"
    allowed.mkdir()
    daemon = App(Config(sockets=[sock_dir / "a.sock"], allow_paths=[allowed], qemu_version=RELEASE))
    await daemon.start()
    client = await JobClient.connect(sock_dir / "a.sock")
    try:
        src = allowed / "src.img"
        write_random(src, 65536)
        await add_file(client, "s", src)
        outside = tmp_path / "out.img"
        text = f"Path '{outside}' is not under an allowed directory"
        for command in ("drive-backup", "drive-mirror"):
            assert await client.error(
                command, device="s", target=str(outside), sync="full", **{"job-id": "j"}
            ) == ("GenericError", text)
        assert not outside.exists()
        await client.ok(
            "drive-backup",
            device="s",
            target=str(allowed / "b.img"),
            sync="full",
            **{"job-id": "b"},
        )
        await client.wait_for("J", "null", "b")
        assert sha256(allowed / "b.img") == sha256(src)
    finally:
        await client.close()
        await daemon.shutdown()
