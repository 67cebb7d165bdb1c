"""Several monitors acting at the same moment.

Regression tests for commands of different monitors that overlap: drained
sections that look alike, and commands that wait (a drain, a file being
created) while another monitor's command arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.app import App, Config
from qmpjobd.jobs import JobStatus

from .conftest import RawClient
from .support import RELEASE
from .support.jobs import Harness, make_harness


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = make_harness()
    yield harness
    await harness.mgr.aclose()


# ------------------------------------------------------ drained sections


async def test_equal_drained_sections_are_left_separately(h: Harness) -> None:
    """A section left while an equal one is still open removes itself only.

    Two monitors drain the same running job: one waits inside its section,
    the other enters and leaves. A job created afterwards must be paused by
    the first section only, and run once that section ends.
    """
    job1, drv1 = await h.running_job("j1")
    first = h.mgr.drained()
    entering = asyncio.create_task(first.__aenter__())
    await drv1.step("tick")  # j1 parks for the drain
    await entering
    async with h.mgr.drained():
        pass  # equal to the first section: same jobs, same selection
    assert job1.pause_count == 1
    job2, drv2 = h.job("j2")  # created inside the first section: paused by it
    assert job2.pause_count == 1
    await first.__aexit__(None, None, None)
    assert h.mgr._drain_sections == []
    assert job1.pause_count == 0 and job2.pause_count == 0
    await drv2.wait_blocked(0)
    assert job2.status is JobStatus.RUNNING and not job2.paused
    assert job1.status is JobStatus.RUNNING


async def test_cancel_all_beside_a_waiting_drain(h: Harness) -> None:
    """quit's drained section and a command's equal one do not mix up."""
    _job1, drv1 = await h.running_job("j1")
    first = h.mgr.drained()
    entering = asyncio.create_task(first.__aenter__())
    await drv1.step("tick")
    await entering
    quitting = asyncio.create_task(h.mgr.cancel_all())
    await drv1.step("succeed")
    await first.__aexit__(None, None, None)
    await asyncio.wait_for(quitting, 5)
    assert h.mgr._drain_sections == []
    assert h.mgr.jobs_newest_first() == []


# ------------------------------------------- one dispatcher for all monitors


@pytest.fixture
async def daemon(tmp_path: Path, sock_dir: Path) -> AsyncIterator[App]:
    app = App(Config(sockets=[sock_dir / "qmp.sock"], allow_paths=[tmp_path], qemu_version=RELEASE))
    await app.start()
    try:
        yield app
    finally:
        await app.shutdown()


class _Gate:
    """Holds every file creation until opened."""

    def __init__(self, app: App) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        original = app.graph.create_file

        async def gated(filename: str, size: int, preallocation: str = "off") -> None:
            self.entered.set()
            await self.open.wait()
            await original(filename, size, preallocation)

        app.graph.create_file = gated  # type: ignore[method-assign]


async def _add_null(client: RawClient, name: str, size: int = 1 << 20, **extra: Any) -> None:
    reply = await client.execute(
        "blockdev-add", {"driver": "null-co", "node-name": name, "size": size, **extra}
    )
    assert reply == {"return": {}}


async def _reply(client: RawClient) -> dict[str, Any]:
    """The next reply, skipping events."""
    while True:
        msg = await client.recv()
        if "event" not in msg:
            return msg


async def test_delete_waits_for_a_mirror_creating_its_target(daemon: App, tmp_path: Path) -> None:
    path = Path(daemon.config.sockets[0])
    a = await RawClient.connect(path)
    b = await RawClient.connect(path)
    try:
        await _add_null(a, "src")
        gate = _Gate(daemon)
        target = str(tmp_path / "mirror.img")
        await a.send(
            {
                "execute": "drive-mirror",
                "arguments": {
                    "device": "src",
                    "target": target,
                    "format": "raw",
                    "sync": "full",
                    "job-id": "m",
                    "speed": 1,
                },
            }
        )
        await asyncio.wait_for(gate.entered.wait(), 5)
        await b.send({"execute": "blockdev-del", "arguments": {"node-name": "src"}})
        # b's command waits until a's is over: nothing comes back yet.
        with pytest.raises(TimeoutError):
            await _reply_within(b, 0.3)
        gate.open.set()
        assert await _reply(a) == {"return": {}}
        assert await _reply(b) == {
            "error": {
                "class": "GenericError",
                "desc": "Node 'src' is busy: block device is in use by block job: mirror",
            }
        }
        assert daemon.graph.lookup("src") is not None
        job = daemon.jobs.find("m")
        assert job.status in (JobStatus.RUNNING, JobStatus.READY)
    finally:
        await a.close()
        await b.close()


async def _reply_within(client: RawClient, seconds: float) -> dict[str, Any]:
    return await asyncio.wait_for(_reply(client), seconds)


async def test_backup_target_cannot_be_deleted_during_the_start_drain(
    daemon: App, tmp_path: Path
) -> None:
    """blockdev-backup drains before it takes its holds; a blockdev-del of
    the target from another monitor lands after the backup, never inside."""
    path = Path(daemon.config.sockets[0])
    a = await RawClient.connect(path)
    b = await RawClient.connect(path)
    try:
        # A slow running job makes the drain wait for its I/O to finish.
        await _add_null(a, "slow", size=64 << 20, **{"latency-ns": 50_000_000})
        await _add_null(a, "slow-t", size=64 << 20)
        await _add_null(a, "src")
        await _add_null(a, "tgt")
        assert await a.execute(
            "blockdev-mirror",
            {"device": "slow", "target": "slow-t", "sync": "full", "job-id": "busy"},
        ) == {"return": {}}
        await a.send(
            {
                "execute": "blockdev-backup",
                "arguments": {
                    "device": "src",
                    "target": "tgt",
                    "sync": "full",
                    "job-id": "b",
                    "speed": 1,
                },
            }
        )
        await b.send({"execute": "blockdev-del", "arguments": {"node-name": "tgt"}})
        assert await _reply(a) == {"return": {}}
        assert await _reply(b) == {
            "error": {
                "class": "GenericError",
                "desc": "Node 'tgt' is busy: block device is in use by block job: backup",
            }
        }
        assert daemon.graph.lookup("tgt") is not None
        for job_id in ("b", "busy"):
            assert await a.execute("job-cancel", {"id": job_id}) == {"return": {}}
    finally:
        await a.close()
        await b.close()


async def test_commands_of_other_monitors_keep_their_order(daemon: App, tmp_path: Path) -> None:
    """Requests that arrive while a command waits run afterwards, in arrival order."""
    path = Path(daemon.config.sockets[0])
    a = await RawClient.connect(path)
    clients = [await RawClient.connect(path) for _ in range(5)]
    try:
        await _add_null(a, "src")
        gate = _Gate(daemon)
        await a.send(
            {
                "execute": "drive-backup",
                "arguments": {
                    "device": "src",
                    "target": str(tmp_path / "b.img"),
                    "format": "raw",
                    "sync": "full",
                    "job-id": "b",
                    "speed": 1,
                },
            }
        )
        await asyncio.wait_for(gate.entered.wait(), 5)
        for n, client in enumerate(clients):
            await client.send(
                {
                    "execute": "blockdev-add",
                    "arguments": {"driver": "null-co", "node-name": f"n{n}"},
                }
            )
            await asyncio.sleep(0.02)
        assert [n.node_name for n in daemon.graph.nodes()] == ["src"]
        gate.open.set()
        assert await _reply(a) == {"return": {}}
        replies = await asyncio.gather(*(_reply(c) for c in clients))
        assert replies == [{"return": {}}] * 5
        names = [n.node_name for n in daemon.graph.nodes() if n.node_name.startswith("n")]
        assert names == ["n4", "n3", "n2", "n1", "n0"]  # newest first
        assert await a.execute("job-cancel", {"id": "b"}) == {"return": {}}
    finally:
        await a.close()
        for client in clients:
            await client.close()
