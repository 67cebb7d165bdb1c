"""The daemon as a real child process: running out of file descriptors, and
a socket path taken over by another daemon."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Descriptors the child may open: enough to start and serve a few monitors.
_NOFILE = 24
_CLIENTS = 100


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of *pid* so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE))


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "daemon exited during start-up"
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.02)


def _greeted(client: socket.socket, timeout: float) -> bool:
    """Whether the daemon's greeting line arrives on *client* within *timeout*."""
    ready, _, _ = select.select([client], [], [], timeout)
    if not ready:
        return False
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = client.recv(4096)
        assert chunk, "connection closed before the greeting"
        data += chunk
    assert data.startswith(b'{"QMP": {"version": ')
    return True


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


def test_out_of_descriptors_neither_spins_nor_floods(
    sock_dir: Path, clients: list[socket.socket]
) -> None:
    path = sock_dir / "d.sock"
    log_path = sock_dir / "log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qmpjobd", "--socket", str(path)],
            stderr=log_file,
            preexec_fn=_limit_descriptors,
        )
    try:
        _wait_for(path, proc)
        for _ in range(_CLIENTS):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))  # the backlog takes what the daemon cannot accept
            clients.append(client)
        time.sleep(0.5)
        greeted = [c for c in clients if _greeted(c, 0.0)]
        waiting = [c for c in clients if c not in greeted]
        assert 0 < len(greeted) < _CLIENTS - 50
        # The daemon now sits at its descriptor limit with clients in the backlog.
        lines_before = log_path.read_bytes().count(b"\n")
        cpu_before = _cpu_seconds(proc.pid)
        started = time.monotonic()
        time.sleep(2.0)
        cpu = _cpu_seconds(proc.pid) - cpu_before
        elapsed = time.monotonic() - started
        lines = log_path.read_bytes().count(b"\n") - lines_before
        print(f"out of descriptors: {100 * cpu / elapsed:.1f} % CPU, {lines} log lines in 2 s")
        assert cpu / elapsed < 0.10
        assert lines <= 3  # at most one warning a second
        assert b"cannot accept connections on " in log_path.read_bytes()
        # A monitor leaves: the oldest client waiting in the backlog gets its place.
        greeted[0].close()
        clients.remove(greeted[0])
        closed_at = time.monotonic()
        assert _greeted(waiting[0], 2.0)
        print(f"greeted {time.monotonic() - closed_at:.3f} s after a monitor left")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(2) == 0
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _start(path: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", str(path)])
    _wait_for(path, proc)
    return proc


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        return _greeted(client, 2.0)


def test_exiting_daemon_leaves_a_newer_daemons_socket(sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    old = _start(path)
    new: subprocess.Popen[bytes] | None = None
    try:
        path.unlink()  # an operator removes the file, and starts a new daemon there
        new = _start(path)
        old.send_signal(signal.SIGTERM)
        assert old.wait(5) == 0
        assert path.exists()
        assert _answers(path)
        new.send_signal(signal.SIGTERM)
        assert new.wait(5) == 0
        assert not path.exists()
    finally:
        for proc in (old, new):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
