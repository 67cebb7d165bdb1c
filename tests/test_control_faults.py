"""x-qmpjobd-fault, -clear-faults and -query-faults: the job's error policy
acts on an injected fault as on a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import J, JobClient, add_file, add_null, blip, sha256, write_random
from .support.control import wait_held

pytestmark = pytest.mark.timeout(20)
MiB = 1 << 20
CHUNK = 64 * 1024


def info(job: str, offset: int, **extra: Any) -> dict[str, Any]:
    return {"device": job, "len": MiB, "offset": offset, "speed": 0, "type": "backup", **extra}


def error(job: str, operation: str, action: str) -> tuple[str, dict[str, str]]:
    return ("BLOCK_JOB_ERROR", {"device": job, "operation": operation, "action": action})


async def test_a_read_fault_at_an_offset_fails_the_backup_with_its_errno(c: JobClient) -> None:
    await add_null(c, "src")
    await add_null(c, "tgt")
    # A fault at 300 KiB: every chunk before it copies, the 256 KiB..320 KiB one fails.
    await c.ok("x-qmpjobd-hold", job="b", offset=256 * 1024)
    assert await c.ok("x-qmpjobd-fault", node="src", op="read", offset=300 * 1024) == {"fault": 1}
    await c.ok("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"})
    await c.ok("x-qmpjobd-step", job="b", bytes=CHUNK)
    await c.wait_for("J", "null", "b")
    assert c.take() == [
        *blip("b"),
        error("b", "read", "report"),
        J("aborting", "b"),
        ("BLOCK_JOB_COMPLETED", info("b", 256 * 1024, error="Input/output error")),
        J("concluded", "b"),
        J("null", "b"),
    ]
    # Fired once: gone.
    assert await c.ok("x-qmpjobd-query-faults") == []


async def test_enospc_on_the_nth_write_stops_the_job_then_resume_retries(
    c: JobClient, tmp_path: Path
) -> None:
    src, tgt = tmp_path / "s.img", tmp_path / "t.img"
    write_random(src, MiB)
    tgt.write_bytes(bytes(MiB))
    await add_file(c, "s", src)
    await add_file(c, "t", tgt)
    await c.ok("x-qmpjobd-fault", node="t", op="write", nth=2, errno=28)
    assert await c.ok("x-qmpjobd-query-faults") == [
        {
            "fault": 1,
            "node": "t",
            "op": "write",
            "nth": 2,
            "errno": 28,
            "always": False,
            "seen": 0,
            "fired": 0,
        }
    ]
    await c.ok(
        "blockdev-backup",
        device="s",
        target="t",
        sync="full",
        speed=CHUNK * 10,
        **{"job-id": "b", "on-target-error": "enospc"},
    )
    await c.wait_for("J", "paused", "b", count=2)
    [row] = await c.ok("query-block-jobs")
    assert (row["io-status"], row["status"], row["offset"]) == ("nospace", "paused", CHUNK)
    await c.ok("job-resume", id="b")
    await c.wait_for("J", "null", "b")
    events = c.take()
    assert events[:6] == [*blip("b"), error("b", "write", "stop"), J("paused", "b")]
    assert events[6:] == [
        J("running", "b"),
        J("waiting", "b"),
        J("pending", "b"),
        ("BLOCK_JOB_COMPLETED", {**info("b", MiB), "speed": CHUNK * 10}),
        J("concluded", "b"),
        J("null", "b"),
    ]
    assert sha256(tgt) == sha256(src)


async def test_an_always_fault_on_flush_with_ignore_policy_is_retried_until_cleared(
    c: JobClient,
) -> None:
    await add_null(c, "src")
    await add_null(c, "tgt")
    await c.ok("x-qmpjobd-hold", job="b", status="waiting")
    await c.ok("x-qmpjobd-fault", node="tgt", op="flush", always=True, errno=5)
    await c.ok(
        "blockdev-backup",
        device="src",
        target="tgt",
        sync="full",
        **{"job-id": "b", "on-target-error": "stop"},
    )
    await c.wait_for("J", "paused", "b", count=2)
    assert c.take() == [*blip("b"), error("b", "write", "stop"), J("paused", "b")]
    [fault] = await c.ok("x-qmpjobd-query-faults")
    assert (fault["seen"], fault["fired"]) == (1, 1)
    await c.ok("x-qmpjobd-clear-faults", node="tgt")
    assert await c.ok("x-qmpjobd-query-faults") == []
    await c.ok("job-resume", id="b")
    await wait_held(c, "b")
    await c.ok("x-qmpjobd-release", job="b")
    await c.wait_for("J", "null", "b")
    assert c.take() == [
        J("running", "b"),
        J("waiting", "b"),
        J("pending", "b"),
        ("BLOCK_JOB_COMPLETED", info("b", MiB)),
        J("concluded", "b"),
        J("null", "b"),
    ]


async def test_fault_argument_errors(c: JobClient) -> None:
    await add_null(c, "n")
    assert await c.error("x-qmpjobd-fault", node="nope", op="read") == (
        "GenericError",
        "Cannot find device='nope' nor node-name='nope'",
    )
    assert await c.error("x-qmpjobd-fault", node="n", op="flush", offset=0) == (
        "GenericError",
        "A flush has no offset",
    )
    assert await c.error("x-qmpjobd-fault", node="n", op="read", nth=0) == (
        "GenericError",
        "Parameter 'nth' expects a positive value",
    )
    assert await c.error("x-qmpjobd-fault", node="n", op="seek") == (
        "GenericError",
        "Parameter 'op' does not accept value 'seek'",
    )
    assert await c.error("x-qmpjobd-clear-faults", fault=3) == ("GenericError", "Fault 3 not found")
    await c.ok("x-qmpjobd-fault", node="n", op="read")
    await c.ok("x-qmpjobd-fault", node="n", op="write", offset=512, always=True)
    await c.ok("x-qmpjobd-clear-faults", fault=1)
    assert [f["fault"] for f in await c.ok("x-qmpjobd-query-faults")] == [2]
    await c.ok("x-qmpjobd-clear-faults")
    assert await c.ok("x-qmpjobd-query-faults") == []
