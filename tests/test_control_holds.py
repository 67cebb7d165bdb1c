"""x-qmpjobd-hold, -release, -step and -query-holds through real sockets."""

from __future__ import annotations

from typing import Any

import pytest

from .support.blockjobs import J, JobClient, add_null, blip, done
from .support.control import wait_held

pytestmark = pytest.mark.timeout(20)
MiB = 1 << 20


async def nodes(c: JobClient, size: int = MiB) -> None:
    await add_null(c, "src", size)
    await add_null(c, "tgt", size)


async def backup(c: JobClient, job: str = "b", **extra: Any) -> None:
    await c.ok(
        "blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": job}, **extra
    )


def query(job: str, status: str, current: int, total: int, kind: str = "backup") -> dict[str, Any]:
    return {
        "current-progress": current,
        "status": status,
        "total-progress": total,
        "type": kind,
        "id": job,
    }


async def test_hold_before_waiting_then_release(c: JobClient) -> None:
    await nodes(c)
    assert await c.ok("x-qmpjobd-hold", job="b", status="waiting") == {"hold": 1}
    await backup(c)
    assert await wait_held(c, "b") == {"hold": 1, "job": "b", "status": "waiting", "held": True}
    assert await c.ok("query-jobs") == [query("b", "running", MiB, MiB)]
    assert c.take() == blip("b")
    assert await c.ok("x-qmpjobd-release", job="b") == {}
    # The completion runs inside the release, as QEMU's deferred job's would.
    assert c.take() == [
        J("waiting", "b"),
        J("pending", "b"),
        ("BLOCK_JOB_COMPLETED", done("b", MiB)),
        J("concluded", "b"),
        J("null", "b"),
    ]
    assert await c.ok("x-qmpjobd-query-holds") == []


async def test_a_job_held_after_its_run_is_cancelled_as_qemu_does(c: JobClient) -> None:
    await nodes(c)
    await c.ok("x-qmpjobd-hold", job="b", status="waiting")
    await backup(c)
    await wait_held(c, "b")
    c.take()
    await c.ok("job-cancel", id="b")
    assert c.take() == [
        J("aborting", "b"),
        ("BLOCK_JOB_CANCELLED", done("b", MiB)),
        J("concluded", "b"),
        J("null", "b"),
    ]
    # The hold was for 'waiting', which the job never entered: it stays.
    assert await c.ok("x-qmpjobd-query-holds") == [
        {"hold": 1, "job": "b", "status": "waiting", "held": False}
    ]


async def test_hold_before_aborting_holds_a_cancelled_job(c: JobClient) -> None:
    await nodes(c)
    await c.ok("x-qmpjobd-hold", job="b", status="aborting")
    await c.ok("x-qmpjobd-hold", job="b", offset=0)
    await backup(c, speed=1)
    await wait_held(c, "b")
    c.take()
    await c.ok("job-cancel", id="b")
    await wait_held(c, "b")
    assert await c.ok("query-jobs") == [query("b", "running", 0, MiB)]
    assert c.take() == []
    await c.ok("x-qmpjobd-release", job="b", hold=1)
    assert c.take() == [
        J("aborting", "b"),
        (
            "BLOCK_JOB_CANCELLED",
            {"device": "b", "len": MiB, "offset": 0, "speed": 1, "type": "backup"},
        ),
        J("concluded", "b"),
        J("null", "b"),
    ]


async def test_offset_hold_stops_the_copy_exactly_and_steps(c: JobClient) -> None:
    await nodes(c)
    await c.ok("x-qmpjobd-hold", job="b", offset=256 * 1024)
    await backup(c)
    await wait_held(c, "b")
    assert await c.ok("query-jobs") == [query("b", "running", 256 * 1024, MiB)]
    # Held inside the run: a pause point. Pause and resume work on it.
    await c.ok("job-pause", id="b")
    await c.wait_for("J", "paused", "b", count=2)
    await c.ok("job-resume", id="b")
    await c.wait_for("J", "running", "b", count=3)
    assert c.take() == [*blip("b"), J("paused", "b"), J("running", "b")]
    await wait_held(c, "b")
    assert await c.ok("x-qmpjobd-step", job="b", bytes=128 * 1024) == {"hold": 2}
    held = await wait_held(c, "b")
    assert held == {"hold": 2, "job": "b", "offset": 384 * 1024, "step": True, "held": True}
    assert await c.ok("query-jobs") == [query("b", "running", 384 * 1024, MiB)]
    await c.ok("x-qmpjobd-release", job="b")
    await c.wait_for("J", "null", "b")


async def test_hold_before_ready_lets_a_test_see_the_mirror_in_sync_but_running(
    c: JobClient,
) -> None:
    await nodes(c)
    await c.ok("x-qmpjobd-hold", job="m", status="ready")
    await c.ok("blockdev-mirror", device="src", target="tgt", sync="full", **{"job-id": "m"})
    await wait_held(c, "m")
    assert await c.ok("query-jobs") == [query("m", "running", MiB, MiB, "mirror")]
    assert await c.error("job-complete", id="m") == (
        "GenericError",
        "Job 'm' in state 'running' cannot accept command verb 'complete'",
    )
    await c.ok("x-qmpjobd-release", job="m")
    ready = {"device": "m", "len": MiB, "offset": MiB, "speed": 0, "type": "mirror"}
    await c.wait_for("BLOCK_JOB_READY", ready)
    assert c.take() == [
        J("created", "m"),
        J("running", "m"),
        J("ready", "m"),
        (
            "BLOCK_JOB_READY",
            {"device": "m", "len": MiB, "offset": MiB, "speed": 0, "type": "mirror"},
        ),
    ]
    await c.ok("job-cancel", id="m")
    await c.wait_for("J", "null", "m")


async def test_a_drain_completes_while_a_job_is_held(c: JobClient) -> None:
    await nodes(c)
    await add_null(c, "tgt2")
    await c.ok("x-qmpjobd-hold", job="b", offset=0)
    await backup(c)
    await wait_held(c, "b")
    # Another backup drains every job: the held one pauses and resumes.
    await c.ok("blockdev-backup", device="src", target="tgt2", sync="full", **{"job-id": "b2"})
    await c.wait_for("J", "null", "b2")
    # The held job parks and goes back as a sleeping job would: the drain is
    # not kept waiting by the hold.
    assert c.take() == [
        *blip("b"),
        J("paused", "b"),
        J("running", "b"),
        *blip("b2"),
        J("waiting", "b2"),
        J("pending", "b2"),
        ("BLOCK_JOB_COMPLETED", done("b2", MiB)),
        J("concluded", "b2"),
        J("null", "b2"),
    ]
    assert (await wait_held(c, "b"))["hold"] == 1
    await c.ok("x-qmpjobd-release", job="b")
    await c.wait_for("J", "null", "b")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("running", "a job starts or resumes running inside the command that starts or resumes it"),
        ("pending", "a job enters it in the same step as 'waiting'; hold it before 'waiting'"),
        ("paused", "a job pauses at once when a command or a drain asks it to"),
        (
            "concluded",
            "a job concludes in the same step as 'pending' or 'aborting', or in job-finalize",
        ),
    ],
)
async def test_holds_where_qemu_never_yields_are_refused(
    c: JobClient, status: str, reason: str
) -> None:
    assert await c.error("x-qmpjobd-hold", job="b", status=status) == (
        "GenericError",
        f"Cannot hold a job before status '{status}': {reason}",
    )


async def test_hold_argument_errors(c: JobClient) -> None:
    await nodes(c)
    text = "Exactly one of 'status' and 'offset' must be given"
    assert await c.error("x-qmpjobd-hold", job="b") == ("GenericError", text)
    assert await c.error("x-qmpjobd-hold", job="b", status="ready", offset=0) == (
        "GenericError",
        text,
    )
    assert await c.error("x-qmpjobd-release", job="b") == ("GenericError", "Job 'b' has no hold")
    assert await c.error("x-qmpjobd-step", job="b", bytes=1) == ("GenericError", "Job not found")
    await c.ok("x-qmpjobd-hold", job="b", status="waiting")
    assert await c.error("x-qmpjobd-release", job="b", hold=9) == (
        "GenericError",
        "Job 'b' has no hold 9",
    )
    await backup(c)
    await wait_held(c, "b")
    assert await c.error("x-qmpjobd-hold", job="b", status="ready") == (
        "GenericError",
        "Job 'b' of type 'backup' never becomes ready",
    )
    assert await c.error("x-qmpjobd-step", job="b", bytes=1) == (
        "GenericError",
        "Job 'b' is not held in a copy loop",
    )
    await c.ok("x-qmpjobd-release", job="b")


async def test_extension_commands_are_unstable_in_the_schema(c: JobClient) -> None:
    schema = await c.ok("query-qmp-schema")
    ours = {e["name"]: e.get("features") for e in schema if e["name"].startswith("x-qmpjobd-")}
    assert ours == {
        name: ["unstable"]
        for name in (
            "x-qmpjobd-hold",
            "x-qmpjobd-release",
            "x-qmpjobd-step",
            "x-qmpjobd-query-holds",
            "x-qmpjobd-fault",
            "x-qmpjobd-clear-faults",
            "x-qmpjobd-query-faults",
            "x-qmpjobd-query-history",
            "x-qmpjobd-guest-write",
            "x-qmpjobd-advance-clock",
            "x-qmpjobd-query-clock",
            "x-qmpjobd-query-events",
        )
    }


async def test_quit_releases_every_hold(c: JobClient) -> None:
    await nodes(c)
    await c.ok("x-qmpjobd-hold", job="b", status="aborting")
    await c.ok("x-qmpjobd-hold", job="b", offset=0)
    await backup(c)
    await wait_held(c, "b")
    c.take()
    await c.ok("quit")
    # As any job waiting at a pause point: the drain parks it, the cancel
    # wakes it, and the hold before 'aborting' is gone.
    assert c.take() == [
        J("paused", "b"),
        J("running", "b"),
        J("aborting", "b"),
        ("BLOCK_JOB_CANCELLED", {**done("b", MiB), "offset": 0}),
        J("concluded", "b"),
        J("null", "b"),
    ]
