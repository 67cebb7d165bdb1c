"""Real QMP clients against qmpjobd: qemu.qmp's QMPClient, its legacy
QEMUMonitorProtocol, and qmp-shell."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from qmpjobd.app import App

#: The default profile's version, and the one of the ``app`` fixture's profile.
VERSION = {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": "qmpjobd 0.1.0"}
VERSION_7_2 = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmpjobd 0.1.0"}


async def test_qmpclient_connect_execute_errors(sock: Path) -> None:
    client = QMPClient("interop")
    await client.connect(str(sock))
    try:
        assert client.greeting is not None
        assert client.greeting.QMP.version == VERSION_7_2
        assert client.greeting.QMP.capabilities == ["oob"]
        assert await client.execute("query-version") == VERSION_7_2
        with pytest.raises(ExecuteError) as info:
            await client.execute("no-such-command")
        assert info.value.error_class == "CommandNotFound"
        assert info.value.error.error.desc == "The command no-such-command has not been found"
        with pytest.raises(ExecuteError) as info:
            await client.execute("query-version", {"bogus": 1})
        assert info.value.error_class == "GenericError"
        assert info.value.error.error.desc == "Parameter 'bogus' is unexpected"
        names = {c["name"] for c in await client.execute("query-commands")}
        assert {"qmp_capabilities", "query-version", "query-qmp-schema", "quit"} <= names
    finally:
        await client.disconnect()


async def test_qmpclient_receives_events(app: App, sock: Path) -> None:
    client = QMPClient("events")
    await client.connect(str(sock))
    try:
        listener = EventListener()
        with client.listen(listener):
            app.bus.publish("JOB_STATUS_CHANGE", {"status": "created", "id": "j1"})
            event = await asyncio.wait_for(listener.get(), 5)
        assert event["event"] == "JOB_STATUS_CHANGE"
        assert event["data"] == {"status": "created", "id": "j1"}
    finally:
        await client.disconnect()


async def test_qmpclient_quit(sock_dir: Path) -> None:
    from qmpjobd.app import Config

    daemon = App(Config(sockets=[sock_dir / "q.sock"]))
    run = asyncio.create_task(daemon.run())
    await daemon.started.wait()
    client = QMPClient("quitter")
    await client.connect(str(sock_dir / "q.sock"))
    assert await client.execute("quit") == {}
    await asyncio.wait_for(run, 2)
    # As with QEMU, the client learns of the server's EOF when it disconnects.
    with pytest.raises(EOFError):
        await client.disconnect()


def test_legacy_client(sock_dir: Path) -> None:
    path = sock_dir / "legacy.sock"
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", str(path)])
    try:
        monitor = QEMUMonitorProtocol(str(path))
        while not path.exists():
            assert proc.poll() is None
            subprocess.run(["sleep", "0.02"], check=True)
        greeting = monitor.connect(negotiate=True)
        assert greeting["QMP"]["version"] == VERSION
        assert monitor.cmd("query-version") == VERSION
        assert monitor.cmd_obj({"execute": "job-pause-nope"}) == {
            "error": {
                "class": "CommandNotFound",
                "desc": "The command job-pause-nope has not been found",
            }
        }
        monitor.close()
        # The legacy client never closes the event loop it made for itself.
        monitor._aloop.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_qmp_shell_on_stdin(sock_dir: Path) -> None:
    shell = shutil.which("qmp-shell", path=str(Path(sys.executable).parent))
    assert shell is not None
    path = sock_dir / "shell.sock"
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", str(path)])
    try:
        while not path.exists():
            assert proc.poll() is None
            subprocess.run(["sleep", "0.02"], check=True)
        out = subprocess.run(
            [shell, str(path)],
            input="query-version\nnope\nquery-version bogus=1\n",
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        assert "Connected to QEMU 10.0.0" in out
        assert '"package": "qmpjobd 0.1.0"' in out
        assert "The command nope has not been found" in out
        assert "Parameter 'bogus' is unexpected" in out
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
