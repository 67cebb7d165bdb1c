"""The job verbs over real sockets, with several monitors.

A scripted in-process driver stands in for the block work, so the tests
decide exactly when a job makes progress, succeeds or fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qmpjobd.app import App
from qmpjobd.jobs import JobType

from .conftest import RawClient
from .support.jobs import ScriptedDriver

pytestmark = pytest.mark.usefixtures("collect_garbage")


def _events(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(m["event"], m["data"]) for m in messages if "event" in m]


def _j(status: str, job: str = "j1") -> tuple[str, dict[str, Any]]:
    return ("JOB_STATUS_CHANGE", {"status": status, "id": job})


async def test_two_monitors_see_the_same_events_in_the_same_order(app: App, sock: Path) -> None:
    first = await RawClient.connect(sock)
    second = await RawClient.connect(sock)
    driver = ScriptedDriver(JobType.BACKUP, kind="backup")
    job = app.jobs.create("j1", driver, auto_finalize=False, auto_dismiss=False)
    app.jobs.start(job)
    await driver.step(("total", 100), ("progress", 100))
    assert await first.execute("job-pause", {"id": "j1"}) == {"return": {}}
    await driver.step("tick")  # the job parks at its next pause point
    assert await second.execute("job-resume", {"id": "j1"}) == {"return": {}}
    await driver.step("succeed")
    assert await second.execute("job-finalize", {"id": "j1"}) == {"return": {}}
    assert await first.execute("job-dismiss", {"id": "j1"}) == {"return": {}}
    expected = [
        _j("created"),
        _j("running"),
        _j("paused"),
        _j("running"),
        _j("waiting"),
        _j("pending"),
        ("BLOCK_JOB_PENDING", {"type": "backup", "id": "j1"}),
        (
            "BLOCK_JOB_COMPLETED",
            {"device": "j1", "len": 100, "offset": 100, "speed": 0, "type": "backup"},
        ),
        _j("concluded"),
        _j("null"),
    ]
    got_first = _events(await first.quiet())
    got_second = _events(await second.quiet())
    assert got_first == expected
    assert got_second == expected
    await first.close()
    await second.close()


async def test_monitor_leaving_mid_job_loses_nothing_late_monitor_dismisses(
    app: App, sock: Path
) -> None:
    creator = await RawClient.connect(sock)
    driver = ScriptedDriver(JobType.BACKUP, kind="backup")
    job = app.jobs.create("j1", driver, auto_dismiss=False)
    app.jobs.start(job)
    await driver.step(("total", 4096), ("progress", 1024))
    reply = await creator.execute("query-jobs")
    assert reply["return"] == [
        {
            "current-progress": 1024,
            "status": "running",
            "total-progress": 4096,
            "type": "backup",
            "id": "j1",
        }
    ]
    # The creator vanishes mid-job, mid-message.
    await creator.send_raw(b'{"execute": "query-jo')
    creator.writer.transport.abort()
    await creator.close()
    await driver.step("eio")
    late = await RawClient.connect(sock)
    assert (await late.execute("query-jobs"))["return"] == [
        {
            "current-progress": 1024,
            "status": "concluded",
            "total-progress": 4096,
            "type": "backup",
            "id": "j1",
            "error": "Input/output error",
        }
    ]
    assert (await late.execute("query-block-jobs"))["return"] == [
        {
            "auto-finalize": True,
            "io-status": "ok",
            "device": "j1",
            "auto-dismiss": False,
            "busy": False,
            "len": 4096,
            "offset": 1024,
            "status": "concluded",
            "paused": False,
            "speed": 0,
            "ready": False,
            "type": "backup",
            "error": "Input/output error",
        }
    ]
    assert await late.execute("job-dismiss", {"id": "j1"}) == {"return": {}}
    assert _events(await late.quiet()) == [_j("null")]
    assert (await late.execute("query-jobs"))["return"] == []
    await late.close()


async def test_lookup_errors_by_family(app: App, sock: Path) -> None:
    client = await RawClient.connect(sock)
    assert await client.execute("job-pause", {"id": "nope"}, id=1) == {
        "id": 1,
        "error": {"class": "GenericError", "desc": "Job not found"},
    }
    assert await client.execute("block-job-pause", {"device": "nope"}, id=2) == {
        "id": 2,
        "error": {"class": "DeviceNotActive", "desc": "Block job 'nope' not found"},
    }
    assert await client.execute("block-job-dismiss", {"id": "nope"}) == {
        "error": {"class": "DeviceNotActive", "desc": "Block job 'nope' not found"}
    }
    driver = ScriptedDriver(JobType.CREATE)
    job = app.jobs.create("cr1", driver, auto_dismiss=False)
    app.jobs.start(job)
    await driver.step("succeed")
    assert await client.execute("block-job-dismiss", {"id": "cr1"}) == {
        "error": {"class": "DeviceNotActive", "desc": "Block job 'cr1' not found"}
    }
    assert await client.execute("job-dismiss", {"id": "cr1"}) == {"return": {}}
    await client.close()


async def test_verb_errors_and_paused_cancel_over_the_wire(app: App, sock: Path) -> None:
    client = await RawClient.connect(sock)
    driver = ScriptedDriver(JobType.BACKUP, kind="backup")
    job = app.jobs.create("j1", driver)
    app.jobs.start(job)
    await driver.step(("total", 10))
    assert await client.execute("job-complete", {"id": "j1"}) == {
        "error": {
            "class": "GenericError",
            "desc": "Job 'j1' in state 'running' cannot accept command verb 'complete'",
        }
    }
    assert await client.execute("block-job-set-speed", {"device": "j1", "speed": -1}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'speed' expects a non-negative value"}
    }
    assert await client.execute("job-resume", {"id": "j1"}) == {
        "error": {"class": "GenericError", "desc": "Can't resume a job that was not paused"}
    }
    assert await client.execute("block-job-pause", {"device": "j1"}) == {"return": {}}
    await driver.step("tick")  # the job parks at its next pause point
    assert await client.execute("job-pause", {"id": "j1"}) == {
        "error": {"class": "GenericError", "desc": "Job is already paused"}
    }
    assert await client.execute("block-job-cancel", {"device": "j1"}) == {
        "error": {
            "class": "GenericError",
            "desc": "The block job for device 'j1' is currently paused",
        }
    }
    assert await client.execute("block-job-cancel", {"device": "j1", "force": True}) == {
        "return": {}
    }
    events = _events(await client.quiet())
    assert events == [
        _j("created"),
        _j("running"),
        _j("paused"),
        _j("running"),
        _j("aborting"),
        (
            "BLOCK_JOB_CANCELLED",
            {"device": "j1", "len": 10, "offset": 0, "speed": 0, "type": "backup"},
        ),
        _j("concluded"),
        _j("null"),
    ]
    await client.close()
