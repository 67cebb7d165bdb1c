"""Error policies (on-source-error / on-target-error) and rate limiting.

Failing nodes are blkdebug rules on raw nodes (raw fires read_aio/write_aio
on its file child), as recorded with qemu-storage-daemon 7.2.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.blockjobs import RateLimiter, error_action
from qmpjobd.clock import ManualClock

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
)

pytestmark = pytest.mark.timeout(20)


NODE = 1000448
LEN = 1048576


async def add_rule_node(
    c: JobClient, name: str, event: str, image: dict[str, Any], errno: int = 5, once: bool = False
) -> None:
    rule: dict[str, Any] = {"event": event, "errno": errno}
    if once:
        rule["once"] = True
    await c.ok(
        "blockdev-add",
        driver="raw",
        file={"driver": "blkdebug", "inject-error": [rule], "image": image},
        **{"node-name": name},
    )


NULL_IMAGE = {"driver": "null-co", "size": NODE}


@pytest.fixture
async def src(c: JobClient, tmp_path: Path) -> Path:
    path = tmp_path / "src.img"
    write_random(path, SIZE)
    await add_file(c, "s", path)
    return path


def error(job: str, operation: str, action: str) -> tuple[str, dict[str, str]]:
    return ("BLOCK_JOB_ERROR", {"device": job, "operation": operation, "action": action})


def failed(job: str, offset: int = 0) -> tuple[str, dict[str, Any]]:
    data = {"device": job, "len": LEN, "offset": offset, "speed": 0, "type": "backup"}
    return ("BLOCK_JOB_COMPLETED", {**data, "error": "Input/output error"})


def test_policy_table() -> None:
    assert [error_action(p, 5) for p in ("report", "ignore", "enospc", "stop", "auto")] == [
        "report",
        "ignore",
        "report",
        "stop",
        "report",
    ]
    assert [error_action(p, 28) for p in ("report", "ignore", "enospc", "stop", "auto")] == [
        "report",
        "ignore",
        "stop",
        "stop",
        "stop",
    ]


async def test_target_report(c: JobClient, src: Path) -> None:
    await add_rule_node(c, "t", "write_aio", NULL_IMAGE)
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **{"job-id": "r"})
    await c.wait_for("J", "null", "r")
    assert c.take() == [
        *blip("r"),
        error("r", "write", "report"),
        J("aborting", "r"),
        failed("r"),
        J("concluded", "r"),
        J("null", "r"),
    ]


async def test_target_enospc_stops_then_cancel(c: JobClient, src: Path) -> None:
    await add_rule_node(c, "t", "write_aio", NULL_IMAGE, errno=28)
    args = {"job-id": "e", "on-target-error": "enospc", "auto-dismiss": False}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("J", "paused", "e", count=2)  # the blip's pause, then the stop
    assert c.take() == [*blip("e"), error("e", "write", "stop"), J("paused", "e")]
    [info] = await c.ok("query-block-jobs")
    assert info == {
        "auto-finalize": True,
        "io-status": "nospace",
        "device": "e",
        "auto-dismiss": False,
        "busy": False,
        "len": LEN,
        "offset": 0,
        "status": "paused",
        "paused": True,
        "speed": 0,
        "ready": False,
        "type": "backup",
    }
    assert await c.error("block-job-cancel", device="e") == (
        "GenericError",
        "The block job for device 'e' is currently paused",
    )
    assert await c.error("job-pause", id="e") == ("GenericError", "Job is already paused")
    await c.ok("job-cancel", id="e")
    await c.wait_for("J", "concluded", "e")
    assert c.take() == [
        J("running", "e"),
        J("aborting", "e"),
        (
            "BLOCK_JOB_CANCELLED",
            {"device": "e", "len": LEN, "offset": 0, "speed": 0, "type": "backup"},
        ),
        J("concluded", "e"),
    ]
    [info] = await c.ok("query-jobs")
    assert info["error"] == "Operation canceled"
    await c.ok("job-dismiss", id="e")


async def test_target_auto_with_eio_reports(c: JobClient, src: Path) -> None:
    await add_rule_node(c, "t", "write_aio", NULL_IMAGE)
    args = {"job-id": "a", "on-target-error": "auto", "auto-dismiss": False}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("J", "concluded", "a")
    assert c.take()[4:] == [
        error("a", "write", "report"),
        J("aborting", "a"),
        failed("a"),
        J("concluded", "a"),
    ]
    [info] = await c.ok("query-block-jobs")
    assert (info["io-status"], info["error"]) == ("ok", "Input/output error")


async def test_target_ignore_retries(c: JobClient, src: Path) -> None:
    await add_rule_node(c, "t", "write_aio", NULL_IMAGE, once=True)
    args = {"job-id": "i", "on-target-error": "ignore"}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("J", "null", "i")
    assert c.take()[4:] == [
        error("i", "write", "ignore"),
        J("waiting", "i"),
        J("pending", "i"),
        ("BLOCK_JOB_COMPLETED", done("i", LEN)),
        J("concluded", "i"),
        J("null", "i"),
    ]


@pytest.mark.parametrize("policy", ["stop", "enospc"])
async def test_target_stop_resume_retries_the_chunk(
    c: JobClient, src: Path, tmp_path: Path, policy: str
) -> None:
    tgt = tmp_path / "tgt.img"
    tgt.write_bytes(bytes(NODE))
    image = {"driver": "file", "filename": str(tgt)}
    await add_rule_node(c, "t", "write_aio", image, errno=28, once=True)
    args = {"job-id": "st", "on-target-error": policy}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("J", "paused", "st", count=2)
    [info] = await c.ok("query-block-jobs")
    assert info["io-status"] == "nospace"
    await c.ok("block-job-resume", device="st")
    await c.wait_for("J", "null", "st")
    assert c.take()[4:] == [
        error("st", "write", "stop"),
        J("paused", "st"),
        J("running", "st"),
        J("waiting", "st"),
        J("pending", "st"),
        ("BLOCK_JOB_COMPLETED", done("st", LEN)),
        J("concluded", "st"),
        J("null", "st"),
    ]
    assert sha256(tgt, SIZE) == sha256(src)


async def test_source_stop_resume(c: JobClient, tmp_path: Path) -> None:
    path = tmp_path / "src.img"
    write_random(path, SIZE)
    image = {"driver": "file", "filename": str(path)}
    await add_rule_node(c, "s", "read_aio", image, once=True)
    tgt = tmp_path / "tgt.img"
    tgt.write_bytes(bytes(NODE))
    await add_file(c, "t", tgt)
    args = {"job-id": "rs", "on-source-error": "stop"}
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **args)
    await c.wait_for("J", "paused", "rs", count=2)
    [info] = await c.ok("query-block-jobs")
    assert (info["io-status"], info["paused"], info["status"]) == ("failed", True, "paused")
    await c.ok("job-resume", id="rs")
    await c.wait_for("J", "null", "rs")
    assert c.take()[4:] == [
        error("rs", "read", "stop"),
        J("paused", "rs"),
        J("running", "rs"),
        J("waiting", "rs"),
        J("pending", "rs"),
        ("BLOCK_JOB_COMPLETED", done("rs", LEN)),
        J("concluded", "rs"),
        J("null", "rs"),
    ]
    assert sha256(tgt, SIZE) == sha256(path)


async def test_source_report(c: JobClient, tmp_path: Path) -> None:
    path = tmp_path / "src.img"
    write_random(path, SIZE)
    await add_rule_node(c, "s", "read_aio", {"driver": "file", "filename": str(path)})
    await add_null(c, "t", NODE)
    await c.ok("blockdev-backup", device="s", target="t", sync="full", **{"job-id": "r"})
    await c.wait_for("J", "null", "r")
    assert c.take()[4:] == [
        error("r", "read", "report"),
        J("aborting", "r"),
        failed("r"),
        J("concluded", "r"),
        J("null", "r"),
    ]


async def test_read_only_target_is_refused(c: JobClient, src: Path, tmp_path: Path) -> None:
    tgt = tmp_path / "ro.img"
    tgt.write_bytes(bytes(NODE))
    await add_file(c, "t", tgt, **{"read-only": True})
    args = {"job-id": "ro", "device": "s", "target": "t", "sync": "full"}
    assert await c.error("blockdev-backup", **args) == (
        "GenericError",
        "Could not create node: Block node is read-only",
    )
    assert c.take() == []
    assert await c.error("blockdev-mirror", **args) == ("GenericError", "Block node is read-only")
    assert c.take() == [J("created", "ro"), J("null", "ro")]
    await c.ok("blockdev-del", **{"node-name": "t"})


# ------------------------------------------------------------- rate limit


def test_rate_limiter_slices() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock, 1 << 20)  # 104857.6 bytes per 100 ms slice
    assert limiter.delay() == 0
    limiter.account(65536)
    assert limiter.delay() == 0
    limiter.account(65536)  # 131072 dispatched: 1.25 slices' worth
    assert limiter.delay() == pytest.approx(0.125)
    clock.advance(0.125)
    assert limiter.delay() == 0
    limiter.set_speed(0)
    limiter.account(1 << 30)
    assert limiter.delay() == 0


async def test_set_speed_changes_progress_rate(c: JobClient, tmp_path: Path) -> None:
    size = 16 << 20
    src = tmp_path / "big.img"
    write_random(src, size)
    tgt = tmp_path / "t.img"
    os.truncate(tgt, size) if tgt.exists() else tgt.write_bytes(b"")
    os.truncate(tgt, size)
    await add_file(c, "s", src)
    await add_file(c, "t", tgt)
    speed = 1 << 20
    await c.ok(
        "blockdev-backup", device="s", target="t", sync="full", speed=speed, **{"job-id": "j"}
    )
    await asyncio.sleep(0.5)
    [info] = await c.ok("query-block-jobs")
    # 0.5 s at 1 MiB/s: far below the 16 MiB (loose: slices and start-up slack)
    assert 0 < info["offset"] <= 2 << 20
    assert info["speed"] == speed
    await c.ok("block-job-set-speed", device="j", speed=0)
    await c.wait_for("J", "null", "j", timeout=10)
    assert ("BLOCK_JOB_COMPLETED", done("j", size)) in c.take()
    assert sha256(src) == sha256(tgt)
