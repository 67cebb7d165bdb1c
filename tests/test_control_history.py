"""x-qmpjobd-query-history: status changes, their causes, the events sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import JobClient, add_null
from .support.control import wait_held

pytestmark = pytest.mark.timeout(20)
MiB = 1 << 20


def changes(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (h["status"], h.get("command"), h.get("monitor"), [e["event"] for e in h["events"]])
        for h in history
    ]


async def test_history_names_the_command_and_monitor_of_each_change(
    c: JobClient, sock: Path
) -> None:
    other = await JobClient.connect(sock)
    await add_null(c, "src")
    await add_null(c, "tgt")
    await c.ok("x-qmpjobd-hold", job="b", offset=0)
    await c.ok("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"})
    await wait_held(c, "b")
    await other.ok("job-pause", id="b")
    await other.wait_for("J", "paused", "b")
    await c.ok("job-resume", id="b")
    await c.ok("x-qmpjobd-release", job="b")
    await c.wait_for("J", "null", "b")
    history = await other.ok("x-qmpjobd-query-history", job="b")
    jsc = "JOB_STATUS_CHANGE"
    assert changes(history) == [
        ("created", "blockdev-backup", 1, [jsc]),
        ("running", "blockdev-backup", 1, [jsc]),
        ("paused", "blockdev-backup", 1, [jsc]),
        ("running", "blockdev-backup", 1, [jsc]),
        ("paused", "job-pause", 2, [jsc]),
        ("running", "job-resume", 1, [jsc]),
        # the release let the job go on: its next change is the release's doing
        ("waiting", "x-qmpjobd-release", 1, [jsc]),
        ("pending", None, None, [jsc, "BLOCK_JOB_COMPLETED"]),
        ("concluded", None, None, [jsc]),
        ("null", None, None, [jsc]),
    ]
    stamps = [(h["at"]["seconds"], h["at"]["microseconds"]) for h in history]
    assert stamps == sorted(stamps)
    assert history[0]["events"][0] == {"event": jsc, "data": {"status": "created", "id": "b"}}
    await other.close()


async def test_history_of_an_unknown_job(c: JobClient) -> None:
    assert await c.error("x-qmpjobd-query-history", job="x") == (
        "GenericError",
        "No history for job 'x'",
    )
