"""The daemon over real Unix sockets: many monitors, slow and vanishing
clients, event fan-out, socket files, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmpjobd.app import App, Config
from qmpjobd.errors import ConfigError

from .conftest import RawClient
from .support import RELEASE

pytestmark = pytest.mark.usefixtures("collect_garbage")

GREETING_VERSION = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmpjobd 0.1.0"}


async def test_greeting_and_negotiation(sock: Path) -> None:
    client = await RawClient.connect(sock, negotiate=False)
    assert client.greeting == {"QMP": {"version": GREETING_VERSION, "capabilities": ["oob"]}}
    assert await client.execute("query-version", id=1) == {
        "id": 1,
        "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
        },
    }
    assert await client.execute("qmp_capabilities", id="a") == {"return": {}, "id": "a"}
    assert await client.execute("query-version", id=2) == {"return": GREETING_VERSION, "id": 2}
    await client.close()


async def test_wire_format_is_compact_crlf(sock: Path) -> None:
    client = await RawClient.connect(sock)
    await client.send_raw(b'{"execute": "query-version", "id": 1}')
    assert await client.recv_line() == (
        b'{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
        b'"package": "qmpjobd 0.1.0"}, "id": 1}\r\n'
    )
    await client.close()


async def test_two_commands_in_one_write_answer_in_order(sock: Path) -> None:
    client = await RawClient.connect(sock)
    await client.send_raw(
        b'{"execute":"query-version","id":1}{"execute":"nope","id":2}\n'
        b'{"execute":"query-commands","id":3}\r\n'
    )
    replies = [await client.recv() for _ in range(3)]
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[1]["error"]["desc"] == "The command nope has not been found"
    await client.close()


async def test_events_reach_every_negotiated_monitor_only(app: App, sock: Path) -> None:
    first = await RawClient.connect(sock)
    second = await RawClient.connect(sock)
    shy = await RawClient.connect(sock, negotiate=False)
    app.bus.publish("JOB_STATUS_CHANGE", {"status": "created", "id": "j1"})
    app.bus.publish("JOB_STATUS_CHANGE", {"status": "running", "id": "j1"})
    for client in (first, second):
        got = [await client.recv(), await client.recv()]
        assert [(m["event"], m["data"]) for m in got] == [
            ("JOB_STATUS_CHANGE", {"status": "created", "id": "j1"}),
            ("JOB_STATUS_CHANGE", {"status": "running", "id": "j1"}),
        ]
        assert set(got[0]["timestamp"]) == {"seconds", "microseconds"}
    # Events published before negotiation are dropped, not queued.
    assert await shy.quiet(0.1) == []
    assert await shy.execute("qmp_capabilities") == {"return": {}}
    assert await shy.quiet(0.1) == []
    for client in (first, second, shy):
        await client.close()


async def test_client_that_never_reads_is_dropped_others_unharmed(
    sock_dir: Path,
) -> None:
    daemon = App(Config(sockets=[sock_dir / "s"], max_outbound=64 * 1024, qemu_version=RELEASE))
    await daemon.start()
    try:
        path = sock_dir / "s"
        lazy = socket.socket(socket.AF_UNIX)
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect(str(path))
        lazy.sendall(b'{"execute":"qmp_capabilities"}')
        good = await RawClient.connect(path)
        await asyncio.sleep(0.05)
        assert len(daemon.server.sessions) == 2
        payload = {"status": "running", "id": "x" * 1000}
        for _ in range(2000):
            daemon.bus.publish("JOB_STATUS_CHANGE", payload)
            if len(daemon.server.sessions) == 1:
                break
            await asyncio.sleep(0)
        # The good client keeps up and keeps being served.
        received = 0
        while True:
            try:
                message = await good.recv(0.5)
            except TimeoutError:
                break
            assert message["event"] == "JOB_STATUS_CHANGE"
            received += 1
        assert received > 0
        assert len(daemon.server.sessions) == 1
        assert (await good.execute("query-version"))["return"] == GREETING_VERSION
        await good.close()
        lazy.close()
    finally:
        await daemon.shutdown()


async def test_client_vanishing_mid_message_harms_nothing(app: App, sock: Path) -> None:
    for junk in (b'{"execute": "query-ver', b'{"execute":"qmp_capabilities"}{"exec'):
        vanishing = await RawClient.connect(sock, negotiate=False)
        await vanishing.send_raw(junk)
        vanishing.writer.transport.abort()
    client = await RawClient.connect(sock)
    assert (await client.execute("query-version"))["return"] == GREETING_VERSION
    await asyncio.sleep(0.05)
    assert len(app.server.sessions) == 1
    await client.close()


async def test_200_monitors_at_once(app: App, sock: Path) -> None:
    clients = await asyncio.gather(*(RawClient.connect(sock) for _ in range(200)))
    replies = await asyncio.gather(
        *(c.execute("query-version", id=i) for i, c in enumerate(clients))
    )
    assert [r["id"] for r in replies] == list(range(200))
    app.bus.publish("JOB_STATUS_CHANGE", {"status": "created", "id": "j"})
    events = await asyncio.gather(*(c.recv() for c in clients))
    assert all(e["data"] == {"status": "created", "id": "j"} for e in events)
    await asyncio.gather(*(c.close() for c in clients))


async def test_socket_mode_and_files(sock_dir: Path) -> None:
    path = sock_dir / "m.sock"
    pidfile = sock_dir / "pid"
    daemon = App(Config(sockets=[path], socket_mode=0o660, pidfile=pidfile, qemu_version=RELEASE))
    await daemon.start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert pidfile.read_text() == f"{os.getpid()}\n"
    await daemon.shutdown()
    assert not path.exists()
    assert not pidfile.exists()


async def test_default_socket_mode_is_0600(sock: Path) -> None:
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


async def test_live_socket_is_refused_stale_one_replaced(sock_dir: Path, sock: Path) -> None:
    with pytest.raises(ConfigError, match="another daemon is listening on"):
        await App(Config(sockets=[sock], qemu_version=RELEASE)).start()
    stale = sock_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()
    daemon = App(Config(sockets=[stale], qemu_version=RELEASE))
    await daemon.start()
    client = await RawClient.connect(stale)
    await client.close()
    await daemon.shutdown()


async def test_not_a_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        await App(Config(sockets=[path], qemu_version=RELEASE)).start()
    assert path.read_text() == "x"


async def test_quit_replies_then_closes(sock_dir: Path) -> None:
    daemon = App(Config(sockets=[sock_dir / "q"], qemu_version=RELEASE))
    run = asyncio.create_task(daemon.run())
    await daemon.started.wait()
    client = await RawClient.connect(sock_dir / "q")
    idle = await RawClient.connect(sock_dir / "q")
    assert await client.execute("quit", id=7) == {"return": {}, "id": 7}
    await asyncio.wait_for(run, 2)
    assert await client.reader.read() == b""
    assert await idle.reader.read() == b""
    assert not (sock_dir / "q").exists()
    await client.close()
    await idle.close()


def _start_daemon(path: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmpjobd", "--socket", str(path), *extra],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_with_clients_connected_exits_fast(sock_dir: Path, signum: int) -> None:
    path = sock_dir / "d.sock"
    proc = _start_daemon(path)
    try:
        clients = [await RawClient.connect(path) for _ in range(5)]
        started = time.monotonic()
        proc.send_signal(signum)
        for client in clients:
            assert await asyncio.wait_for(client.reader.read(), 2) == b""
            await client.close()
        rc = await asyncio.to_thread(proc.wait, 5)
        assert time.monotonic() - started < 1.0
        assert rc == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_second_daemon_on_same_path_refuses_to_start(sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    proc = _start_daemon(path)
    try:
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qmpjobd",
            "--socket",
            str(path),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await second.communicate()
        assert second.returncode == 1
        assert err.decode() == f"qmpjobd: another daemon is listening on {path}\n"
        client = await RawClient.connect(path)
        await client.close()
    finally:
        proc.terminate()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_client_vanishing_mid_command_loses_no_job(app: App, sock: Path) -> None:
    client = await RawClient.connect(sock)
    for name in ("src", "tgt"):
        reply = await client.execute(
            "blockdev-add", {"driver": "null-co", "node-name": name, "size": 1 << 20}
        )
        assert reply == {"return": {}}
    # blockdev-backup drains jobs before its reply: vanish while it runs.
    await client.send(
        {
            "execute": "blockdev-backup",
            "arguments": {
                "job-id": "bk",
                "device": "src",
                "target": "tgt",
                "sync": "none",
                "auto-dismiss": False,
            },
        }
    )
    client.writer.transport.abort()
    await client.close()
    other = await RawClient.connect(sock)
    jobs = (await other.execute("query-jobs"))["return"]
    assert [(j["id"], j["status"]) for j in jobs] == [("bk", "running")]
    assert await other.execute("job-cancel", {"id": "bk"}) == {"return": {}}
    events = [(e["event"], e["data"].get("status")) for e in await other.quiet()]
    assert events == [
        ("JOB_STATUS_CHANGE", "aborting"),
        ("BLOCK_JOB_CANCELLED", None),
        ("JOB_STATUS_CHANGE", "concluded"),
    ]
    await other.close()


async def test_deep_and_large_messages_leave_the_session_usable(sock: Path) -> None:
    client = await RawClient.connect(sock)
    # 1 MiB of arguments: a normal argument error, then the session goes on.
    big = {"execute": "query-version", "arguments": {"x": "y" * (1 << 20)}}
    assert await client.execute(big["execute"], big["arguments"]) == {
        "error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}
    }
    # Nesting over QEMU's limit: one limit error, then the parser resynchronises.
    await client.send_raw(b"{" + b'"a":' + b"[" * 1030 + b"]" * 1030 + b"}")
    first = await client.recv()
    assert first == {
        "error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}
    }
    await client.quiet(0.3)
    assert (await client.execute("query-version", id=1))["id"] == 1
    await client.close()
