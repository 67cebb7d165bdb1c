"""Bug patterns of management layers, reproduced against qmpjobd.

Run with ``pytest examples/test_management_patterns.py`` (``pip install
'qmpjobd[testing]'``). Each pattern pits a deliberately naive client against
a fixed one, using only the ``qmpjobd`` pytest plugin and the
``x-qmpjobd-*`` extension commands: holds make every race happen at the same
point on every run, faults make a job fail where the test says, and the
daemon runs on a virtual clock that moves only when the test advances it.
The last test runs every scenario 20 times and checks the clients'
transcripts (commands, replies, events with their timestamps) are the same
each time.

The clients are small on purpose: each has the one bug its pattern is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from qmpjobd.testing import Daemon, Monitor, start_daemon

pytestmark = [
    pytest.mark.asyncio,  # also where pytest-asyncio runs in strict mode
    pytest.mark.qmpjobd(clock="virtual"),
]
MiB = 1 << 20
SECOND = 1_000_000_000
#: How long a client waits for an event before it gives up.
PATIENCE = 0.2


async def nodes(qmp: Monitor, *names: str) -> None:
    for name in names:
        await qmp.cmd("blockdev-add", driver="null-co", size=MiB, **{"node-name": name})


async def advance(test: Monitor, ns: int = SECOND) -> None:
    """Let a second of virtual time pass (copies move only then)."""
    await test.cmd("x-qmpjobd-advance-clock", ns=ns)


async def mirror_ready(qmp: Monitor, test: Monitor, job: str = "m") -> None:
    await qmp.cmd(
        "blockdev-mirror",
        device="src",
        target="tgt",
        sync="full",
        **{"job-id": job, "auto-dismiss": False},
    )
    await advance(test)
    await qmp.wait_event("BLOCK_JOB_READY", device=job)


# -- 1. A cancelled job concludes without an error ---------------------------
#
# block-job-cancel on a READY mirror ends it *successfully*: no switch to the
# target, BLOCK_JOB_COMPLETED without "error", "concluded" without "error".


async def naive_abort_mirror(qmp: Monitor, job: str) -> str:
    await qmp.cmd("block-job-cancel", device=job)
    data = await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
    await qmp.cmd("job-dismiss", id=job)
    # Bug: "completed without error" is taken for "the mirror completed".
    return "failed" if "error" in data else "completed"


async def fixed_abort_mirror(qmp: Monitor, job: str) -> str:
    await qmp.cmd("block-job-cancel", device=job)
    data = await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
    await qmp.cmd("job-dismiss", id=job)
    # A cancel the job accepted never pivots, whatever the event says.
    return "failed" if "error" in data else "cancelled"


async def scenario_cancelled_mirror(daemon: Daemon, abort: Callable[..., Awaitable[str]]) -> Any:
    async with daemon.monitor() as qmp, daemon.monitor() as test:
        await nodes(qmp, "src", "tgt")
        await mirror_ready(qmp, test)
        return await abort(qmp, "m"), qmp.transcript


# -- 2. The job concludes while the client cancels it -----------------------
#
# The client cancels a READY mirror and waits for BLOCK_JOB_CANCELLED before
# dismissing; the job concludes with BLOCK_JOB_COMPLETED instead. The hold
# keeps the job between its cancel and its conclusion (run over, still
# "ready") so the client's view is checked exactly there.


async def naive_cancel_then_restart(qmp: Monitor, job: str) -> str:
    await qmp.cmd("block-job-cancel", device=job)
    while True:
        name, data = await qmp.next_event()
        if name in ("BLOCK_JOB_CANCELLED", "BLOCK_JOB_COMPLETED") and data["device"] == job:
            break
    if name == "BLOCK_JOB_CANCELLED":
        await qmp.cmd("job-dismiss", id=job)
    # Bug: only BLOCK_JOB_CANCELLED ends a cancel; after COMPLETED it never dismisses.
    try:
        await qmp.cmd(
            "blockdev-mirror", device="src", target="tgt2", sync="full", **{"job-id": job}
        )
    except ExecuteError as exc:
        return str(exc)
    return "restarted"


async def fixed_cancel_then_restart(qmp: Monitor, job: str) -> str:
    await qmp.cmd("block-job-cancel", device=job)
    # Whatever the ending, the job concludes: dismiss it then.
    await qmp.wait_status(job, "concluded")
    await qmp.cmd("job-dismiss", id=job)
    await qmp.cmd("blockdev-mirror", device="src", target="tgt2", sync="full", **{"job-id": job})
    return "restarted"


async def scenario_cancel_race(daemon: Daemon, client: Callable[..., Awaitable[str]]) -> Any:
    async with daemon.monitor() as qmp, daemon.monitor() as test:
        await nodes(qmp, "src", "tgt", "tgt2")
        await mirror_ready(qmp, test)
        await test.cmd("x-qmpjobd-hold", job="m", status="waiting")
        task = asyncio.create_task(client(qmp, "m"))
        await test.wait_held("m")
        # Cancelled, its run over, not concluded yet:
        [row] = await test.cmd("query-jobs")
        assert row["status"] == "ready"
        await test.cmd("x-qmpjobd-release", job="m")
        result = await task
        return result, qmp.transcript


# -- 3. job-complete before the mirror is ready; 0 of 0 taken for "done" ----


async def naive_switch(qmp: Monitor, job: str) -> str:
    await qmp.cmd("blockdev-mirror", device="src", target="tgt", sync="full", **{"job-id": job})
    while True:
        [info] = await qmp.cmd("query-block-jobs")
        if info["offset"] == info["len"]:  # Bug: 0 of 0 looks done.
            break
    for _ in range(5):  # Bug: retries a refused complete instead of waiting for READY.
        try:
            await qmp.cmd("job-complete", id=job)
            return "switched"
        except ExecuteError:
            continue
    return "gave up"


async def fixed_switch(qmp: Monitor, job: str) -> str:
    await qmp.cmd("blockdev-mirror", device="src", target="tgt", sync="full", **{"job-id": job})
    await qmp.wait_event("BLOCK_JOB_READY", device=job)
    await qmp.cmd("job-complete", id=job)
    data = await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
    return "failed" if "error" in data else "switched"


async def scenario_early_complete(daemon: Daemon, client: Callable[..., Awaitable[str]]) -> Any:
    async with daemon.monitor() as qmp, daemon.monitor() as test:
        await nodes(qmp, "src", "tgt")
        # The mirror's first moments: scanning the source, 0 of 0 bytes.
        await test.cmd("x-qmpjobd-hold", job="m", offset=0)
        task = asyncio.create_task(client(qmp, "m"))
        await test.wait_held("m")
        await asyncio.sleep(0.05)  # let the naive client spin on the hold
        # Released, the mirror is in sync at once (1 MiB is within one slice
        # of the virtual throughput): no clock to advance, so nothing races
        # with the client's own commands.
        await test.cmd("x-qmpjobd-release", job="m")
        return await task, qmp.transcript


# -- 4. A backup reported as successful when its completion said it failed --


async def naive_backup(qmp: Monitor, job: str) -> str:
    await qmp.cmd("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": job})
    await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
    return "succeeded"  # Bug: the event's "error" member is not read.


async def fixed_backup(qmp: Monitor, job: str) -> str:
    await qmp.cmd("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": job})
    data = await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
    return f"failed: {data['error']}" if "error" in data else "succeeded"


async def scenario_failed_backup(daemon: Daemon, client: Callable[..., Awaitable[str]]) -> Any:
    async with daemon.monitor() as qmp, daemon.monitor() as test:
        await nodes(qmp, "src", "tgt")
        await test.cmd("x-qmpjobd-fault", node="tgt", op="write", offset=512 * 1024)
        task = asyncio.create_task(client(qmp, "b"))
        await test.wait_status("b", "running")
        await advance(test)
        return await task, qmp.transcript


# -- 5. A client that restarts must rebuild its view from query-jobs --------


async def naive_resume_after_restart(qmp: Monitor, job: str) -> str:
    # Bug: waits for the events of a job it started before the restart;
    # they were sent while it was away.
    try:
        data = await qmp.wait_event("BLOCK_JOB_COMPLETED", timeout=PATIENCE, device=job)
    except TimeoutError:
        return "still running"
    return "failed" if "error" in data else "succeeded"


async def fixed_resume_after_restart(qmp: Monitor, job: str) -> str:
    jobs = {row["id"]: row for row in await qmp.cmd("query-jobs")}
    row = jobs.get(job)
    if row is None:
        return "unknown"
    if row["status"] != "concluded":
        data = await qmp.wait_event("BLOCK_JOB_COMPLETED", device=job)
        return "failed" if "error" in data else "succeeded"
    await qmp.cmd("job-dismiss", id=job)
    return f"failed: {row['error']}" if "error" in row else "succeeded"


async def scenario_restart(daemon: Daemon, client: Callable[..., Awaitable[str]]) -> Any:
    async with daemon.monitor() as test:
        async with daemon.monitor() as before:
            await nodes(before, "src", "tgt")
            await test.cmd("x-qmpjobd-hold", job="b", offset=256 * 1024)
            await before.cmd(
                "blockdev-backup",
                device="src",
                target="tgt",
                sync="full",
                **{"job-id": "b", "auto-dismiss": False},
            )
            await test.wait_held("b")
        # The client is gone; the job ends meanwhile.
        await test.cmd("x-qmpjobd-release", job="b")
        await advance(test)
        await test.wait_status("b", "concluded")
        async with daemon.monitor() as after:
            return await client(after, "b"), [
                *before.transcript,
                "-- restart --",
                *after.transcript,
            ]


SCENARIOS: dict[str, tuple[Callable[..., Awaitable[Any]], Any, Any, str, str]] = {
    "cancelled-mirror": (
        scenario_cancelled_mirror,
        naive_abort_mirror,
        fixed_abort_mirror,
        "completed",
        "cancelled",
    ),
    "cancel-race": (
        scenario_cancel_race,
        naive_cancel_then_restart,
        fixed_cancel_then_restart,
        "Job ID 'm' already in use",
        "restarted",
    ),
    "early-complete": (
        scenario_early_complete,
        naive_switch,
        fixed_switch,
        "gave up",
        "switched",
    ),
    "failed-backup": (
        scenario_failed_backup,
        naive_backup,
        fixed_backup,
        "succeeded",
        "failed: Input/output error",
    ),
    "restart": (
        scenario_restart,
        naive_resume_after_restart,
        fixed_resume_after_restart,
        "still running",
        "succeeded",
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_naive_client_shows_the_bug_and_fixed_client_passes(
    qmpjobd: Daemon, name: str
) -> None:
    scenario, naive, fixed, naive_outcome, fixed_outcome = SCENARIOS[name]
    outcome, _ = await scenario(qmpjobd, naive)
    assert outcome == naive_outcome
    with start_daemon(clock="virtual") as fresh:
        outcome, _ = await scenario(fresh, fixed)
    assert outcome == fixed_outcome


@pytest.mark.parametrize("client", ["naive", "fixed"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_twenty_runs_give_the_same_transcript(name: str, client: str) -> None:
    scenario, naive, fixed, _, _ = SCENARIOS[name]
    transcripts = []
    for _ in range(20):
        with start_daemon(clock="virtual") as daemon:
            transcripts.append(await scenario(daemon, naive if client == "naive" else fixed))
    assert all(t == transcripts[0] for t in transcripts), name
