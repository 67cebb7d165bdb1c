"""--clock virtual: time moves only when a test says so; transcripts repeat byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.app import App, Config
from qmpjobd.clock import VirtualClock
from qmpjobd.testing import Daemon

from .conftest import RawClient
from .support import RELEASE

pytestmark = pytest.mark.timeout(30)
MiB = 1 << 20
EPOCH = 1_700_000_000


def progress(rows: Any) -> list[tuple[str, int, int]]:
    return [(r["status"], r["current-progress"], r["total-progress"]) for r in rows]


@pytest.mark.qmpjobd(clock="virtual")
async def test_a_rate_limited_copy_moves_only_when_the_clock_does(qmpjobd: Daemon) -> None:
    async with qmpjobd.monitor() as qmp:
        for name in ("src", "tgt"):
            await qmp.cmd("blockdev-add", driver="null-co", size=MiB, **{"node-name": name})
        await qmp.cmd(
            "blockdev-backup",
            device="src",
            target="tgt",
            sync="full",
            speed=256 * 1024,
            **{"job-id": "b"},
        )
        first = progress(await qmp.cmd("query-jobs"))
        await asyncio.sleep(0.05)  # real time does not move it
        assert progress(await qmp.cmd("query-jobs")) == first
        assert first == [("running", 64 * 1024, MiB)]
        # 256 KiB/s: one 64 KiB chunk per quarter second of virtual time.
        assert await qmp.cmd("x-qmpjobd-advance-clock", ns=1_000_000_000) == {
            "virtual": True,
            "elapsed-ns": 1_000_000_000,
            "elapsed-us": 1_000_000,
        }
        assert progress(await qmp.cmd("query-jobs")) == [("running", 5 * 64 * 1024, MiB)]
        await qmp.cmd("x-qmpjobd-advance-clock", ns=10_000_000_000)
        await qmp.wait_status("b", "null")


@pytest.mark.qmpjobd(clock="virtual")
async def test_an_unlimited_copy_takes_virtual_time_and_steps_take_none(qmpjobd: Daemon) -> None:
    async with qmpjobd.monitor() as qmp:
        for name in ("src", "tgt"):
            await qmp.cmd("blockdev-add", driver="null-co", size=64 * MiB, **{"node-name": name})
        await qmp.cmd("x-qmpjobd-hold", job="b", offset=0)
        await qmp.cmd("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"})
        assert (await qmp.wait_held("b"))["offset"] == 0
        await qmp.cmd("x-qmpjobd-step", job="b", bytes=8 * MiB)
        # Settled after the command: the step is done, the clock has not moved.
        assert progress(await qmp.cmd("query-jobs")) == [("running", 8 * MiB, 64 * MiB)]
        assert (await qmp.cmd("x-qmpjobd-query-clock"))["elapsed-ns"] == 0
        await qmp.cmd("x-qmpjobd-release", job="b")
        # 64 MiB/s without a limit: the 56 MiB left take 0.875 s.
        await qmp.cmd("x-qmpjobd-advance-clock", ns=800_000_000)
        [(status, done, _)] = progress(await qmp.cmd("query-jobs"))
        assert status == "running" and done < 64 * MiB
        await qmp.cmd("x-qmpjobd-advance-clock", ns=200_000_000)
        await qmp.wait_status("b", "null")


async def test_advance_needs_a_virtual_clock(qmpjobd: Daemon) -> None:
    async with qmpjobd.monitor() as qmp:
        assert await qmp.cmd("x-qmpjobd-query-clock") == {"virtual": False}
        assert await qmp.error("x-qmpjobd-advance-clock", ns=1) == (
            "GenericError",
            "The clock is not virtual (start the daemon with --clock virtual)",
        )


def test_timestamps_strictly_increase_at_one_instant() -> None:
    clock = VirtualClock(EPOCH)
    assert [clock.wall() for _ in range(3)] == [(EPOCH, 0), (EPOCH, 1), (EPOCH, 2)]
    clock.set_now(1_000)  # 1 µs later: still after the last stamp
    assert clock.wall() == (EPOCH, 3)
    clock.set_now(2_000_000_000)
    assert clock.wall() == (EPOCH + 2, 0)


SCRIPT: list[dict[str, Any]] = [
    {"execute": "qmp_capabilities"},
    {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "s", "size": MiB}},
    {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "t", "size": MiB}},
    {
        "execute": "blockdev-backup",
        "arguments": {"job-id": "b", "device": "s", "target": "t", "sync": "full", "speed": MiB},
    },
    {"execute": "query-block-jobs"},
    {"execute": "x-qmpjobd-advance-clock", "arguments": {"ns": 300_000_000}},
    {"execute": "job-pause", "arguments": {"id": "b"}},
    {"execute": "query-jobs"},
    {"execute": "job-resume", "arguments": {"id": "b"}},
    {"execute": "x-qmpjobd-advance-clock", "arguments": {"ns": 2_000_000_000}},
    {"execute": "query-jobs"},
]


async def _transcript(sock_dir: Path, run: int) -> bytes:
    path = sock_dir / f"v{run}.sock"
    app = App(Config(sockets=[path], clock="virtual", clock_epoch=EPOCH, qemu_version=RELEASE))
    await app.start()
    try:
        client = await RawClient.connect(path, negotiate=False)
        received = b""
        for request in SCRIPT:
            await client.send(request)
            while True:
                line = await client.recv_line()
                received += line
                if b'"event"' not in line:
                    break
        await client.close()
        return received
    finally:
        await app.shutdown()


async def test_the_same_script_gives_a_byte_identical_transcript(sock_dir: Path) -> None:
    first = await _transcript(sock_dir, 0)
    assert b'"timestamp": {"seconds": 1700000000, "microseconds": 0}' in first
    for run in range(1, 5):
        assert await _transcript(sock_dir, run) == first


def test_the_command_line_starts_a_virtual_clock_at_its_epoch(sock_dir: Path) -> None:
    import subprocess
    import sys

    from qmpjobd.cli import build_parser, make_config

    args = build_parser().parse_args(
        ["--socket", str(sock_dir / "q.sock"), "--clock", "virtual", "--clock-epoch", "1234.5"]
    )
    config = make_config(args, {})
    assert (config.clock, config.clock_epoch) == ("virtual", 1234.5)
    app = App(config)
    assert app.clock.wall() == (1234, 500_000)
    app.graph.close()
    out = subprocess.run(
        [sys.executable, "-m", "qmpjobd", "--socket", "x", "--clock", "sundial"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "argument --clock: invalid choice: 'sundial'" in out.stderr


@pytest.mark.qmpjobd(clock="virtual")
async def test_latency_takes_virtual_time_and_a_drain_takes_it_too(qmpjobd: Daemon) -> None:
    async with qmpjobd.monitor() as qmp:
        await qmp.cmd("blockdev-add", driver="null-co", size=MiB, **{"node-name": "src"})
        await qmp.cmd("blockdev-add", driver="null-co", size=MiB, **{"node-name": "tgt2"})
        # Every request to the target takes 100 ms of virtual time.
        await qmp.cmd(
            "blockdev-add",
            driver="null-co",
            size=MiB,
            **{"node-name": "tgt", "latency-ns": 100_000_000},
        )
        await qmp.cmd("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"})
        # Settled with the first write in flight: nothing moves without the clock.
        [job] = await qmp.cmd("query-block-jobs")
        assert (job["offset"], job["busy"]) == (0, True)
        await qmp.cmd("x-qmpjobd-advance-clock", ns=100_000_000)
        [job] = await qmp.cmd("query-block-jobs")
        assert job["offset"] == MiB
        # The flush is in flight now; a second backup drains the first: the
        # drain waits for the flush, and that takes its 100 ms of virtual time.
        before = (await qmp.cmd("x-qmpjobd-query-clock"))["elapsed-ns"]
        await qmp.cmd(
            "blockdev-backup", device="src", target="tgt2", sync="full", **{"job-id": "b2"}
        )
        after = (await qmp.cmd("x-qmpjobd-query-clock"))["elapsed-ns"]
        assert (before, after) == (100_000_000, 200_000_000)
        await qmp.wait_status("b", "null")
        await qmp.cmd("x-qmpjobd-advance-clock", ns=1_000_000_000)
        await qmp.wait_status("b2", "null")
