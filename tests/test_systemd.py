"""systemd integration without systemd: socket activation with real passed
descriptors, and notification to a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_daemon import Client, Daemon

# What systemd does before it runs the service: the sockets become
# descriptors 3, 4, ... and LISTEN_PID names the service's own pid; then the
# command (the rest of the arguments) runs in the same process.
_ACTIVATE = """\
import os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
for target, fd in enumerate(fds, 3):
    if fd != target:
        os.dup2(fd, target)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def _listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.kill()


def _activated(
    directory: Path,
    sockets: list[socket.socket],
    names: str | None,
    *args: str,
    daemons: list[Daemon],
    env: dict[str, str] | None = None,
) -> Daemon:
    # Move the sockets above the target range first, so dup2 never overwrites one.
    high = [os.dup(s.fileno()) for s in sockets]
    high = [os.dup2(fd, 100 + i) for i, fd in enumerate(high)]
    environ = {**os.environ, **(env or {}), "LISTEN_FDS": str(len(sockets))}
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    try:
        daemon = Daemon(
            directory,
            *args,
            env=environ,
            prefix=(sys.executable, "-c", _ACTIVATE, ",".join(map(str, high))),
            pass_fds=tuple(high),
        )
    finally:
        for fd in high:
            os.close(fd)
    daemons.append(daemon)
    return daemon


def test_socket_activation_serves_the_passed_sockets(sock_dir: Path, daemons: list[Daemon]) -> None:
    paths = [sock_dir / "a.sock", sock_dir / "b.sock"]
    sockets = [_listening(p) for p in paths]
    daemon = _activated(sock_dir, sockets, "qmp:admin", daemons=daemons)
    for s in sockets:
        s.close()  # only the daemon holds them now
    daemon.started()
    assert daemon.lines()[0].endswith(f" listening on {paths[0]} (qmp), {paths[1]} (admin)")
    for path in paths:
        client = Client(path)
        assert client.execute("qmp_capabilities") == {"return": {}}
        client.close()
    assert daemon.stop() == 0
    # The socket files belong to the service manager: left where they are.
    assert all(p.exists() for p in paths)


def test_a_socket_option_naming_a_passed_socket_uses_it(
    sock_dir: Path, daemons: list[Daemon]
) -> None:
    path = sock_dir / "a.sock"
    other = sock_dir / "own.sock"
    listener = _listening(path)
    daemon = _activated(
        sock_dir, [listener], None, "--socket", str(path), "--socket", str(other), daemons=daemons
    )
    listener.close()
    daemon.started()
    assert daemon.lines()[0].endswith(f" listening on {path} (unknown), {other}")
    Client(path).close()
    Client(other).close()
    assert daemon.stop() == 0
    assert path.exists()
    assert not other.exists()


def test_sockets_meant_for_another_process_are_not_taken(sock_dir: Path) -> None:
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "qmpjobd"], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 1
    assert proc.stderr == b"qmpjobd: no socket to listen on: give --socket PATH\n"


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.parametrize("abstract", [False, True])
def test_readiness_status_and_stopping_are_notified(
    sock_dir: Path, daemons: list[Daemon], abstract: bool
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.settimeout(5)
    if abstract:
        name = f"qmpjobd-test-{os.getpid()}-{id(notify)}"
        notify.bind("\0" + name)
        address = "@" + name
    else:
        notify.bind(str(sock_dir / "notify"))
        address = str(sock_dir / "notify")
    path = sock_dir / "s"
    env = {**os.environ, "NOTIFY_SOCKET": address}
    daemon = Daemon(sock_dir, "--socket", str(path), env=env)
    daemons.append(daemon)
    try:
        assert _recv(notify) == "READY=1\nSTATUS=0 monitors; jobs: none"
        assert path.exists()  # ready means listening
        client = Client(path)
        assert _recv(notify) == "STATUS=1 monitor; jobs: none"
        client.execute("qmp_capabilities")
        for node in ("src", "dst"):
            client.execute("blockdev-add", driver="null-co", **{"node-name": node})
        reply = client.execute(
            "blockdev-backup", device="src", target="dst", sync="full", speed=1, **{"job-id": "j"}
        )
        assert reply == {"return": {}}
        client.execute("query-jobs")
        client.close()
        statuses = []
        while "STATUS=0 monitors; jobs: 1 running" not in statuses:
            statuses.append(_recv(notify))
        # A backup starts with a drain (running, paused, running): whichever of
        # these states the daemon saw between two passes of its loop is sent.
        assert "STATUS=1 monitor; jobs: 1 running" in statuses
        assert set(statuses[:-1]) <= {
            "STATUS=1 monitor; jobs: 1 created",
            "STATUS=1 monitor; jobs: 1 running",
            "STATUS=1 monitor; jobs: 1 paused",
        }
        daemon.proc.send_signal(signal.SIGTERM)
        assert _recv(notify) == "STOPPING=1"
        assert daemon.proc.wait(10) == 0
    finally:
        notify.close()


UNITS = Path(__file__).parent.parent / "contrib" / "systemd"


def _unit(name: str) -> dict[str, str]:
    """Key=value lines of a unit file (enough for these simple units)."""
    entries = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries[key] = value
    return entries


def test_unit_files_fit_the_daemon() -> None:
    from qmpjobd.cli import build_parser

    service = _unit("qmpjobd.service")
    sock = _unit("qmpjobd.socket")
    assert service["Type"] == "notify"
    assert service["Requires"] == "qmpjobd.socket"
    program, *args = service["ExecStart"].split()
    assert Path(program).name == "qmpjobd"
    assert build_parser().parse_args(args).sockets == []  # the socket comes from systemd
    assert sock["ListenStream"].startswith("/run/qmpjobd/")
    assert sock["SocketMode"] == "0600"
