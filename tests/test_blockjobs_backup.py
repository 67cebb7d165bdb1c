"""blockdev-backup, drive-backup and transaction through real sockets.

Event sequences and texts as recorded from qemu-storage-daemon 7.2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import (
    SIZE,
    J,
    JobClient,
    add_file,
    add_null,
    blip,
    done,
    sha256,
    write_random,
    write_sparse,
)

pytestmark = pytest.mark.timeout(20)


async def files(c: JobClient, tmp_path: Path, size: int = SIZE) -> tuple[Path, Path]:
    src, tgt = tmp_path / "src.img", tmp_path / "tgt.img"
    write_random(src, size)
    tgt.write_bytes(b"")
    os.truncate(tgt, size)
    await add_file(c, "s", src)
    await add_file(c, "t", tgt)
    return src, tgt


async def test_backup_defaults_sequence_and_data(c: JobClient, tmp_path: Path) -> None:
    src, tgt = await files(c, tmp_path)
    before = sha256(src)
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **{"job-id": "j"})
    assert c.take() == blip("j")  # all before the reply
    await c.wait_for("J", "null", "j")
    assert c.take() == [
        J("waiting", "j"),
        J("pending", "j"),
        ("BLOCK_JOB_COMPLETED", done("j", 1048576)),
        J("concluded", "j"),
        J("null", "j"),
    ]
    # The target grows to the node size: the source's bytes, then zeros.
    assert tgt.stat().st_size == 1000448
    assert sha256(tgt, SIZE) == sha256(src) == before
    assert tgt.read_bytes()[SIZE:] == bytes(1000448 - SIZE)


async def test_backup_manual_finalize_and_dismiss(c: JobClient, tmp_path: Path) -> None:
    await files(c, tmp_path)
    args = {"job-id": "j", "auto-finalize": False, "auto-dismiss": False}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("BLOCK_JOB_PENDING", {"type": "backup", "id": "j"})
    assert c.take() == [
        *blip("j"),
        J("waiting", "j"),
        J("pending", "j"),
        ("BLOCK_JOB_PENDING", {"type": "backup", "id": "j"}),
    ]
    [info] = await c.ok("query-jobs")
    assert info == {
        "current-progress": 1048576,
        "status": "pending",
        "total-progress": 1048576,
        "type": "backup",
        "id": "j",
    }
    await c.ok("job-finalize", id="j")
    await c.wait_for("J", "concluded", "j")
    assert c.take() == [("BLOCK_JOB_COMPLETED", done("j", 1048576)), J("concluded", "j")]
    [info] = await c.ok("query-jobs")
    assert info["status"] == "concluded" and "error" not in info
    await c.ok("job-dismiss", id="j")
    await c.wait_for("J", "null", "j")


async def test_sparse_source_full_and_top(c: JobClient, tmp_path: Path) -> None:
    src = tmp_path / "sparse.img"
    size = 4 << 20
    write_sparse(src, size, [(5 * 65536, 2 * 65536), (3 << 20, 1000)])
    for i, sync in enumerate(("full", "top")):
        tgt = tmp_path / f"t{i}.img"
        tgt.write_bytes(b"x" * size)  # old data: holes must be zeroed
        await add_file(c, f"t{i}", tgt)
        if i == 0:
            await add_file(c, "s", src)
        await c.ok("blockdev-backup", device="s", target=f"t{i}", sync=sync, **{"job-id": sync})
        await c.wait_for("J", "null", sync)
        # top on a node without a backing file is full, as in QEMU
        assert ("BLOCK_JOB_COMPLETED", done(sync, size)) in c.take()
        assert sha256(tgt) == sha256(src)


async def test_sparse_target_stays_sparse_with_drive_backup(c: JobClient, tmp_path: Path) -> None:
    src = tmp_path / "sparse.img"
    size = 8 << 20
    write_sparse(src, size, [(65536, 65536)])
    await add_file(c, "s", src)
    target = tmp_path / "new.img"
    await c.ok("drive-backup", device="s", target=str(target), sync="full", **{"job-id": "d"})
    await c.wait_for("J", "null", "d")
    assert sha256(target) == sha256(src)
    # A new file reads as zeros: the holes were not written.
    assert target.stat().st_blocks * 512 < 1 << 20


async def test_sync_none_runs_until_cancelled(c: JobClient) -> None:
    await add_null(c, "a")
    await add_null(c, "b")
    await c.ok("blockdev-backup", device="a", target="b", sync="none", **{"job-id": "n"})
    [info] = await c.ok("query-block-jobs")
    assert (info["status"], info["len"], info["offset"]) == ("running", 1048576, 0)
    c.take()
    await c.ok("job-cancel", id="n")
    await c.wait_for("J", "null", "n")
    assert c.take() == [
        J("aborting", "n"),
        (
            "BLOCK_JOB_CANCELLED",
            {"device": "n", "len": 1048576, "offset": 0, "speed": 0, "type": "backup"},
        ),
        J("concluded", "n"),
        J("null", "n"),
    ]


async def test_drain_blip_on_running_job(c: JobClient) -> None:
    """A later backup command, even one that fails, drains running jobs first."""
    for name in ("a", "b", "c3"):
        await add_null(c, name)
    await c.ok("blockdev-backup", device="a", target="b", sync="none", **{"job-id": "j0"})
    c.take()
    assert await c.error("blockdev-backup", device="x", target="b", sync="none") == (
        "GenericError",
        "Cannot find device='x' nor node-name='x'",
    )
    assert c.take() == [J("paused", "j0"), J("running", "j0")]
    # Same source: drained once for the transaction, once for the source.
    await c.ok("blockdev-backup", device="a", target="c3", sync="none", **{"job-id": "j1"})
    assert c.take() == [
        J("paused", "j0"),
        J("running", "j0"),
        J("paused", "j0"),
        *blip("j1"),
        J("running", "j0"),
    ]
    # A transaction drains every job, the oldest first.
    await c.ok("transaction", actions=[])
    assert c.take() == [
        J("paused", "j0"),
        J("paused", "j1"),
        J("running", "j0"),
        J("running", "j1"),
    ]
    # Mirror and create do not drain.
    await add_null(c, "d")
    await add_null(c, "e")
    await c.ok("blockdev-mirror", device="d", target="e", sync="full", **{"job-id": "m"})
    await c.wait_for("J", "ready", "m")
    assert [e for e in c.take() if e[0] == "J" and e[2] != "m"] == []


async def test_negative_speed_creates_then_nulls(c: JobClient, tmp_path: Path) -> None:
    await files(c, tmp_path)
    assert await c.error(
        "blockdev-backup", device="s", target="t", sync="full", speed=-1, **{"job-id": "j"}
    ) == ("GenericError", "Parameter 'speed' expects a non-negative value")
    assert c.take() == [J("created", "j"), J("null", "j")]


async def test_argument_errors_in_qemu_order(c: JobClient, tmp_path: Path) -> None:
    await files(c, tmp_path)
    write_random(tmp_path / "big.img", 2000000)
    await add_file(c, "b", tmp_path / "big.img")

    async def err(**args: Any) -> str:
        reply = await c.cmd("blockdev-backup", **args)
        assert reply["error"]["class"] == "GenericError"
        desc: str = reply["error"]["desc"]
        return desc

    j = {"job-id": "j"}
    assert await err(device="nope", target="nope2", sync="full") == (
        "Cannot find device='nope' nor node-name='nope'"
    )
    assert await err(device="s", target="nope2", sync="full") == (
        "Cannot find device='nope2' nor node-name='nope2'"
    )
    assert await err(device="s", target="t", sync="full") == "Invalid job ID ''"
    assert await err(device="s", target="s", sync="full") == "Source and target cannot be the same"
    assert await err(device="s", target="b", sync="full") == (
        "Source and target image have different sizes"
    )
    assert await err(device="s", target="t", sync="full", **{"job-id": "1j"}) == (
        "Invalid job ID '1j'"
    )
    assert await err(device="s", target="s", sync="incremental", **j) == (
        "must provide a valid bitmap name for 'incremental' sync mode"
    )
    assert await err(device="s", target="t", sync="bitmap", **j) == (
        "must provide a valid bitmap name for 'bitmap' sync mode"
    )
    assert await err(
        device="s", target="t", sync="incremental", bitmap="b", **{"bitmap-mode": "never"}, **j
    ) == ("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
    assert await err(device="s", target="t", sync="full", bitmap="bm", **j) == (
        "Bitmap 'bm' could not be found"
    )
    assert await err(device="s", target="t", sync="none", **{"bitmap-mode": "never"}, **j) == (
        "Cannot specify bitmap sync mode without a bitmap"
    )
    assert await err(device="s", target="t", sync="full", compress=True, speed=-1, **j) == (
        "Compression is not supported for this drive "
    )
    assert await err(device="s", target="t", sync="full", **{"job-id": ""}) == "Invalid job ID ''"
    reply = await c.cmd("blockdev-backup", device="s", target="t", sync="fast", **j)
    assert reply["error"]["desc"] == "Parameter 'sync' does not accept value 'fast'"
    reply = await c.cmd("blockdev-backup", device="s", sync="full", **j)
    assert reply["error"]["desc"] == "Parameter 'target' is missing"
    assert [e for e in c.take() if e[1] not in ("created", "null")] == []


async def test_busy_nodes_and_blockdev_del(c: JobClient) -> None:
    for i in range(1, 7):
        await add_null(c, f"n{i}")
    await c.ok("blockdev-backup", device="n1", target="n2", sync="none", **{"job-id": "j0"})
    await c.ok("blockdev-mirror", device="n5", target="n6", sync="full", **{"job-id": "m"})
    await c.wait_for("J", "ready", "m")

    async def err(command: str, **args: Any) -> str:
        reply = await c.cmd(command, **args)
        desc: str = reply["error"]["desc"]
        return desc

    busy = "Node '{}' is busy: block device is in use by block job: {}"
    bb = {"job-id": "a", "sync": "none"}
    assert await err("blockdev-backup", device="n3", target="n2", **bb) == busy.format(
        "n2", "backup"
    )
    assert await err("blockdev-backup", device="n3", target="n5", **bb) == busy.format(
        "n5", "mirror"
    )
    assert await err("blockdev-backup", device="n3", target="n6", **bb) == busy.format(
        "n6", "mirror"
    )
    assert await err("blockdev-backup", device="n6", target="n3", **bb) == busy.format(
        "n6", "mirror"
    )
    bm = {"job-id": "a", "sync": "full"}
    assert await err("blockdev-mirror", device="n3", target="n2", **bm) == busy.format(
        "n2", "backup"
    )
    assert await err("blockdev-mirror", device="n3", target="n5", **bm) == busy.format(
        "n5", "mirror"
    )
    assert await err("blockdev-mirror", device="n1", target="n3", **bm) == "Need a root block node"
    assert await err("blockdev-mirror", device="n2", target="n3", **bm) == "Need a root block node"
    assert await err("blockdev-mirror", device="n5", target="n3", **bm) == "Need a root block node"
    assert await err("blockdev-del", **{"node-name": "n1"}) == "Block device n1 is in use"
    assert await err("blockdev-del", **{"node-name": "n2"}) == busy.format("n2", "backup")
    assert await err("blockdev-del", **{"node-name": "n5"}) == busy.format("n5", "mirror")
    assert await err("blockdev-del", **{"node-name": "n6"}) == "Node n6 is in use"
    # A second backup from the same source is allowed.
    await c.ok("blockdev-backup", device="n1", target="n3", sync="none", **{"job-id": "j1"})
    for job in ("j0", "j1", "m"):
        await c.ok("job-cancel", id=job)
        await c.wait_for("J", "null", job)
    for i in range(1, 7):
        await c.ok("blockdev-del", **{"node-name": f"n{i}"})


async def test_cancel_midway_leaves_source_untouched(c: JobClient, tmp_path: Path) -> None:
    size = 8 << 20
    src, tgt = await files(c, tmp_path, size)
    before = sha256(src)
    # 1 MiB/s: a few slices in, the job is still copying.
    await c.ok(
        "blockdev-backup", device="s", target="t", sync="full", speed=1 << 20, **{"job-id": "j"}
    )
    await c.ok("job-cancel", id="j")
    await c.wait_for("J", "null", "j")
    cancelled = [e for e in c.take() if e[0] == "BLOCK_JOB_CANCELLED"]
    assert cancelled and cancelled[0][1]["offset"] < size
    assert sha256(src) == before
    assert sha256(tgt) != before


async def test_drive_backup(c: JobClient, tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    write_random(src, SIZE)
    await add_file(c, "s", src)
    target = tmp_path / "copy.img"

    async def err(**args: Any) -> str:
        reply = await c.cmd("drive-backup", device="s", sync="full", **{"job-id": "d"}, **args)
        desc: str = reply["error"]["desc"]
        return desc

    assert await err(target=str(tmp_path / "nodir" / "x.img")) == (
        f"Could not create '{tmp_path}/nodir/x.img': No such file or directory"
    )
    assert await err(target=str(target), format="qcow9") == "Unknown file format 'qcow9'"
    assert await err(target=str(target), format="null-co") == (
        "Format driver 'null-co' does not support image creation"
    )
    assert await err(target=str(tmp_path / "none.img"), mode="existing") == (
        f"Could not open '{tmp_path}/none.img': No such file or directory"
    )
    # The file is created before the job id is checked.
    reply = await c.cmd("drive-backup", device="s", sync="full", target=str(target))
    assert reply["error"]["desc"] == "Invalid job ID ''"
    assert target.stat().st_size == 1000448
    assert c.take() == []
    await c.ok("drive-backup", device="s", sync="full", target=str(target), **{"job-id": "d"})
    assert c.take() == blip("d")
    await c.wait_for("J", "null", "d")
    assert sha256(target, SIZE) == sha256(src)
    # The target node was the job's: it is gone with it.
    names = [n["node-name"] for n in await c.ok("query-named-block-nodes")]
    assert names == ["s"]


async def test_quit_cancels_running_backup(c: JobClient) -> None:
    await add_null(c, "a")
    await add_null(c, "b")
    await c.ok("blockdev-backup", device="a", target="b", sync="none", **{"job-id": "q"})
    c.take()
    await c.ok("quit")
    assert c.take() == [
        J("paused", "q"),
        J("running", "q"),
        J("aborting", "q"),
        (
            "BLOCK_JOB_CANCELLED",
            {"device": "q", "len": 1048576, "offset": 0, "speed": 0, "type": "backup"},
        ),
        J("concluded", "q"),
        J("null", "q"),
    ]
