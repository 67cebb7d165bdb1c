"""transaction: individual and grouped completion, failures, abort.

Sequences as recorded from qemu-storage-daemon 7.2 (section 8: where 7.2
hangs, a grouped transaction that fails after creating two jobs, qmpjobd
replies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import J, JobClient, add_file, add_null, done, write_random

pytestmark = pytest.mark.timeout(20)


def backup(job: str, device: str, target: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "blockdev-backup",
        "data": {"job-id": job, "device": device, "target": target, "sync": "full", **extra},
    }


async def add_failing(c: JobClient, name: str, size: int, errno: int = 5) -> None:
    await c.ok(
        "blockdev-add",
        driver="raw",
        file={
            "driver": "blkdebug",
            "inject-error": [{"event": "write_aio", "errno": errno}],
            "image": {"driver": "null-co", "size": size},
        },
        **{"node-name": name},
    )


async def test_abort_cancels_created_job(c: JobClient) -> None:
    await add_null(c, "a1")
    await add_null(c, "a2")
    actions = [backup("x1", "a1", "a2", sync="none"), {"type": "abort", "data": {}}]
    assert await c.error("transaction", actions=actions) == (
        "GenericError",
        "Transaction aborted using Abort action",
    )
    assert c.take() == [
        J("created", "x1"),
        J("aborting", "x1"),
        J("concluded", "x1"),
        J("null", "x1"),
    ]
    assert await c.ok("query-jobs") == []
    # The nodes are free again.
    await c.ok("blockdev-del", **{"node-name": "a2"})


async def test_failing_action_after_a_created_job(c: JobClient) -> None:
    await add_null(c, "a1")
    await add_null(c, "a2")
    actions = [backup("x1", "a1", "a2"), backup("x2", "nope", "a2")]
    assert await c.error("transaction", actions=actions) == (
        "GenericError",
        "Cannot find device='nope' nor node-name='nope'",
    )
    assert c.take() == [
        J("created", "x1"),
        J("aborting", "x1"),
        J("concluded", "x1"),
        J("null", "x1"),
    ]


async def test_grouped_failure_with_two_jobs_replies(c: JobClient) -> None:
    for name in ("a1", "a2", "a3", "a4"):
        await add_null(c, name)
    actions = [backup("x1", "a1", "a2"), backup("x2", "a3", "a4"), {"type": "abort", "data": {}}]
    assert await c.error(
        "transaction", actions=actions, properties={"completion-mode": "grouped"}
    ) == ("GenericError", "Transaction aborted using Abort action")
    events = c.take()
    assert events[:2] == [J("created", "x1"), J("created", "x2")]
    for job in ("x1", "x2"):
        assert [e for e in events if e[2] == job] == [
            J("created", job),
            J("aborting", job),
            J("concluded", job),
            J("null", job),
        ]


async def test_argument_errors(c: JobClient) -> None:
    assert await c.error("transaction", actions=[{"type": "nope", "data": {}}]) == (
        "GenericError",
        "Parameter 'type' does not accept value 'nope'",
    )
    assert await c.error("transaction", actions=[{"type": "abort"}]) == (
        "GenericError",
        "Parameter 'actions[0].data' is missing",
    )
    assert await c.error("transaction", actions=[], properties={"completion-mode": "bogus"}) == (
        "GenericError",
        "Parameter 'completion-mode' does not accept value 'bogus'",
    )
    assert await c.ok("transaction", actions=[]) == {}


async def test_grouped_one_fails_cancels_the_other(c: JobClient, tmp_path: Path) -> None:
    size = 8 << 20
    write_random(tmp_path / "s.img", size)
    write_random(tmp_path / "s2.img", size, seed=3)
    (tmp_path / "t.img").write_bytes(bytes(size))
    await add_file(c, "s", tmp_path / "s.img")
    await add_file(c, "s2", tmp_path / "s2.img")
    await add_file(c, "t", tmp_path / "t.img")
    await add_failing(c, "bad", size)
    actions = [backup("ja", "s", "t", speed=1 << 20), backup("jb", "s2", "bad")]
    await c.ok("transaction", actions=actions, properties={"completion-mode": "grouped"})
    assert c.take() == [
        J("created", "ja"),
        J("created", "jb"),
        J("running", "ja"),
        J("paused", "ja"),
        J("running", "jb"),
        J("paused", "jb"),
        J("running", "ja"),
        J("running", "jb"),
    ]
    await c.wait_for("J", "null", "ja")
    events = c.take()
    cancelled = events[-3]
    assert cancelled[0] == "BLOCK_JOB_CANCELLED" and cancelled[1]["offset"] < size
    assert events[:-3] == [
        ("BLOCK_JOB_ERROR", {"device": "jb", "operation": "write", "action": "report"}),
        J("aborting", "jb"),
        (
            "BLOCK_JOB_COMPLETED",
            {
                "device": "jb",
                "len": size,
                "offset": 0,
                "speed": 0,
                "type": "backup",
                "error": "Input/output error",
            },
        ),
        J("concluded", "jb"),
        J("null", "jb"),
        J("aborting", "ja"),
    ]
    assert events[-2:] == [J("concluded", "ja"), J("null", "ja")]


async def test_grouped_success_and_individual_independence(c: JobClient) -> None:
    for name in ("a1", "a2", "a3", "a4"):
        await add_null(c, name)
    actions = [backup("ja", "a1", "a2"), backup("jb", "a3", "a4")]
    await c.ok("transaction", actions=actions, properties={"completion-mode": "grouped"})
    c.take()
    await c.wait_for("J", "null", "ja")
    events = c.take()
    assert sorted(events[:2]) == [J("waiting", "ja"), J("waiting", "jb")]
    assert events[2:] == [
        J("pending", "jb"),
        J("pending", "ja"),
        ("BLOCK_JOB_COMPLETED", done("jb", 1 << 20)),
        J("concluded", "jb"),
        J("null", "jb"),
        ("BLOCK_JOB_COMPLETED", done("ja", 1 << 20)),
        J("concluded", "ja"),
        J("null", "ja"),
    ]
    # individual (the default): one job's failure leaves the other alone
    await add_failing(c, "bad", 1 << 20)
    await c.ok("transaction", actions=[backup("ok", "a1", "a2"), backup("ko", "a3", "bad")])
    await c.wait_for("J", "null", "ok")
    await c.wait_for("J", "null", "ko")
    events = c.take()
    assert ("BLOCK_JOB_COMPLETED", done("ok", 1 << 20)) in events
    assert not [e for e in events if e[0] == "BLOCK_JOB_CANCELLED"]
