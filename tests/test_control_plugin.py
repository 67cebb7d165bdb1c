"""The pytest plugin (qmpjobd.testing): its fixture, its monitor helper."""

from __future__ import annotations

import re

import pytest
from qemu.qmp import ExecuteError

from qmpjobd.testing import Daemon

pytestmark = pytest.mark.timeout(20)


async def test_the_fixture_runs_a_daemon_on_a_private_socket(qmpjobd: Daemon) -> None:
    assert qmpjobd.socket.is_socket()
    async with qmpjobd.monitor() as qmp, qmpjobd.monitor() as other:
        await qmp.cmd("blockdev-add", driver="null-co", size=1 << 20, **{"node-name": "src"})
        await qmp.cmd("blockdev-add", driver="null-co", size=1 << 20, **{"node-name": "tgt"})
        await qmp.cmd("x-qmpjobd-hold", job="b", status="waiting")
        await qmp.cmd("blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"})
        await other.wait_held("b")
        await other.cmd("x-qmpjobd-release", job="b")
        await qmp.wait_status("b", "running")
        await qmp.expect_events(
            [
                ("JOB_STATUS_CHANGE", {"status": "paused", "id": "b"}),
                ("JOB_STATUS_CHANGE", {"status": "running", "id": "b"}),
                ("JOB_STATUS_CHANGE", {"status": "waiting", "id": "b"}),
                ("JOB_STATUS_CHANGE", {"status": "pending", "id": "b"}),
            ]
        )
        await qmp.wait_status("b", "null")
        assert await qmp.error("job-dismiss", id="b") == ("GenericError", "Job not found")
        with pytest.raises(ExecuteError):
            await qmp.cmd("job-pause", id="b")
        assert qmp.transcript[:2] == [
            '-> blockdev-add {"driver": "null-co", "node-name": "src", "size": 1048576}',
            "<- {}",
        ]
        assert qmp.transcript[-2:] == [
            '-> job-pause {"id": "b"}',
            "<- error GenericError: Job not found",
        ]


@pytest.mark.qmpjobd(clock="sundial")
def test_unknown_options_are_refused(request: pytest.FixtureRequest) -> None:
    with pytest.raises(ValueError, match="unknown clock 'sundial'"):
        request.getfixturevalue("qmpjobd")


@pytest.mark.qmpjobd(profile="7.2", clock="virtual", epoch=5)
async def test_marker_options_reach_the_daemon(qmpjobd: Daemon) -> None:
    assert qmpjobd.app.config.qemu_version == "7.2"
    assert qmpjobd.app.clock.wall() == (5, 0)


@pytest.mark.qmpjobd(profile="0.1")
def test_unknown_profiles_are_refused(request: pytest.FixtureRequest) -> None:
    with pytest.raises(ValueError, match=re.escape("unknown profile '0.1' (known: 10.0, 7.2)")):
        request.getfixturevalue("qmpjobd")


def test_loading_the_plugin_imports_neither_qemu_qmp_nor_the_daemon() -> None:
    import subprocess
    import sys

    code = (
        "import sys, qmpjobd.testing.plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('qemu', 'qmpjobd.app', "
        "'pytest_asyncio'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
