"""The daemon as an operator runs it: a real child process, real signals.

Start-up errors, signals, the pid file lock, logs, --daemonize.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd import __version__

from .support.sync_client import SyncClient as Client

_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qmpjobd", *args]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Daemon:
    """``python -m qmpjobd`` in a child process, its stderr kept in a file."""

    def __init__(
        self,
        directory: Path,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        pass_fds: tuple[int, ...] = (),
        log_name: str = "log",
    ) -> None:
        self.log_path = directory / log_name
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [*prefix, *_command(*args)],
                stderr=log_file,
                env=env,
                pass_fds=pass_fds,
            )

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"daemon exited: {self.log()}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.log()!r}"
            time.sleep(0.02)

    def started(self) -> Daemon:
        self.wait_for_log(" started, pid ")
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.kill()


@pytest.fixture
def start(sock_dir: Path, daemons: list[Daemon]) -> Callable[..., Daemon]:
    def start(*args: str, **kwargs: Any) -> Daemon:
        daemon = Daemon(sock_dir, *args, **kwargs)
        daemons.append(daemon)
        return daemon.started()

    return start


def _fails(directory: Path, *args: str, prefix: tuple[str, ...] = ()) -> str:
    """Run a daemon that must fail to start; return its stderr."""
    before = _tree(directory)
    proc = subprocess.run([*prefix, *_command(*args)], capture_output=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == b""
    assert _tree(directory) == before  # nothing left behind
    return proc.stderr.decode()


# -- start-up errors -----------------------------------------------------------


def test_socket_in_missing_directory(sock_dir: Path) -> None:
    path = sock_dir / "missing" / "s"
    assert _fails(sock_dir, "--socket", str(path)) == (
        f"qmpjobd: Failed to bind socket to {path}: No such file or directory\n"
    )


def test_socket_under_a_file(sock_dir: Path) -> None:
    (sock_dir / "file").write_text("")
    path = sock_dir / "file" / "s"
    assert _fails(sock_dir, "--socket", str(path)) == (
        f"qmpjobd: Failed to bind socket to {path}: Not a directory\n"
    )


def test_socket_in_unwritable_directory(sock_dir: Path) -> None:
    locked = sock_dir / "locked"
    locked.mkdir(mode=0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: drop the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner")
    path = locked / "s"
    assert _fails(sock_dir, "--socket", str(path), prefix=prefix) == (
        f"qmpjobd: Failed to bind socket to {path}: Permission denied\n"
    )


def test_socket_path_too_long(sock_dir: Path) -> None:
    path = sock_dir / ("x" * (108 - len(str(sock_dir)) - 1))
    assert len(str(path)) == 108
    assert _fails(sock_dir, "--socket", str(path)) == (
        f"qmpjobd: UNIX socket path '{path}' is too long (must be less than 108 bytes)\n"
    )


def test_longest_socket_path_works(sock_dir: Path, start: Callable[..., Daemon]) -> None:
    path = sock_dir / ("x" * (107 - len(str(sock_dir)) - 1))
    assert len(str(path)) == 107
    daemon = start("--socket", str(path))
    Client(path).close()
    assert daemon.stop() == 0


def test_pidfile_in_missing_directory_leaves_no_socket(sock_dir: Path) -> None:
    pidfile = sock_dir / "missing" / "pid"
    err = _fails(sock_dir, "--socket", str(sock_dir / "s"), "--pidfile", str(pidfile))
    assert err == (
        f"qmpjobd: cannot create PID file: Could not create '{pidfile}':"
        " No such file or directory\n"
    )


def test_missing_allow_path_is_refused(sock_dir: Path) -> None:
    folder = sock_dir / "images"
    err = _fails(sock_dir, "--socket", str(sock_dir / "s"), "--allow-path", str(folder))
    assert err == f"qmpjobd: --allow-path {folder}: No such file or directory\n"
    (sock_dir / "file").write_text("")
    err = _fails(sock_dir, "--socket", str(sock_dir / "s"), "--allow-path", str(sock_dir / "file"))
    assert err == f"qmpjobd: --allow-path {sock_dir / 'file'}: Not a directory\n"


def test_no_socket_is_one_line(sock_dir: Path) -> None:
    assert _fails(sock_dir) == "qmpjobd: no socket to listen on: give --socket PATH\n"


def test_usage_error_is_one_line(sock_dir: Path) -> None:
    err = _fails(sock_dir, "--socket", str(sock_dir / "s"), "--log-level", "loud")
    assert err.startswith("qmpjobd: argument --log-level: invalid choice: 'loud'")
    assert err.count("\n") == 1


def test_live_socket_is_refused(sock_dir: Path, start: Callable[..., Daemon]) -> None:
    path = sock_dir / "s"
    start("--socket", str(path))
    assert _fails(sock_dir, "--socket", str(path)) == (
        f"qmpjobd: another daemon is listening on {path}\n"
    )
    Client(path).close()


# -- the pid file --------------------------------------------------------------


def test_pidfile_is_locked(sock_dir: Path, start: Callable[..., Daemon]) -> None:
    pidfile = sock_dir / "pid"
    first = start("--socket", str(sock_dir / "s1"), "--pidfile", str(pidfile))
    assert pidfile.read_text() == f"{first.proc.pid}\n"
    locked = (
        "qmpjobd: cannot create PID file: Cannot lock pid file: Resource temporarily unavailable\n"
    )
    err = _fails(sock_dir, "--socket", str(sock_dir / "s2"), "--pidfile", str(pidfile))
    assert err == locked
    # The same command line twice: the pid file is checked before the socket.
    err = _fails(sock_dir, "--socket", str(sock_dir / "s1"), "--pidfile", str(pidfile))
    assert err == locked
    assert pidfile.read_text() == f"{first.proc.pid}\n"
    Client(sock_dir / "s1").close()
    assert first.stop() == 0
    assert _tree(sock_dir) == ["log"]


def test_stale_pidfile_is_taken_over(sock_dir: Path, start: Callable[..., Daemon]) -> None:
    pidfile = sock_dir / "pid"
    pidfile.write_text("999999999\n")
    daemon = start("--socket", str(sock_dir / "s"), "--pidfile", str(pidfile))
    assert pidfile.read_text() == f"{daemon.proc.pid}\n"
    assert daemon.stop() == 0
    assert not pidfile.exists()


# -- signals -------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_stop_signals_exit_0_and_clean_up(
    sock_dir: Path, start: Callable[..., Daemon], signum: signal.Signals
) -> None:
    path = sock_dir / "s"
    daemon = start("--socket", str(path), "--pidfile", str(sock_dir / "pid"))
    client = Client(path)
    assert daemon.stop(signum) == 0
    assert client.file.readline() == b""
    client.close()
    assert _tree(sock_dir) == ["log"]
    assert daemon.lines()[-1].endswith(f" qmpjobd: info: stopping ({signum.name})")


def test_sigusr1_logs_status_and_sigpipe_is_ignored(
    sock_dir: Path, start: Callable[..., Daemon]
) -> None:
    path = sock_dir / "s"
    daemon = start("--socket", str(path))
    daemon.proc.send_signal(signal.SIGUSR1)
    daemon.wait_for_log("status: ")
    assert daemon.lines()[-1].endswith(
        " qmpjobd: info: status: 0 monitors; jobs: none; 0 block nodes"
    )
    client = Client(path)
    assert client.execute("qmp_capabilities") == {"return": {}}
    for name in ("src", "dst"):
        reply = client.execute("blockdev-add", driver="null-co", **{"node-name": name})
        assert reply == {"return": {}}
    reply = client.execute(
        "blockdev-backup", device="src", target="dst", sync="full", speed=1, **{"job-id": "j"}
    )
    assert reply == {"return": {}}
    Client(path).close()  # a second monitor comes and goes
    daemon.proc.send_signal(signal.SIGPIPE)
    # The second monitor's disconnect reaches the daemon in its own time: ask until seen.
    deadline = time.monotonic() + 5
    while "status: 1 monitor;" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        daemon.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
    assert daemon.lines()[-1].endswith(
        " qmpjobd: info: status: 1 monitor; jobs: 1 running; 2 block nodes"
    )
    assert daemon.proc.poll() is None
    assert client.execute("query-jobs")["return"][0]["status"] == "running"
    client.close()
    assert daemon.stop() == 0


# -- logs ----------------------------------------------------------------------


def test_default_log_is_one_line_at_start_and_one_at_stop(
    sock_dir: Path, start: Callable[..., Daemon]
) -> None:
    path = sock_dir / "s"
    daemon = start("--socket", str(path))
    client = Client(path)
    client.execute("qmp_capabilities")
    client.execute("no-such-command")
    client.close()
    assert daemon.stop() == 0
    lines = daemon.lines()
    assert len(lines) == 2
    assert re.fullmatch(
        rf"{_STAMP} qmpjobd: info: qmpjobd {re.escape(__version__)} \(QEMU 10\.0\.0\) started,"
        rf" pid {daemon.proc.pid}, listening on {re.escape(str(path))}",
        lines[0],
    )
    assert re.fullmatch(rf"{_STAMP} qmpjobd: info: stopping \(SIGTERM\)", lines[1])


def test_debug_log_has_connects_commands_and_results(
    sock_dir: Path, start: Callable[..., Daemon]
) -> None:
    path = sock_dir / "s"
    images = sock_dir / "images"
    images.mkdir()
    daemon = start("--socket", str(path), "--log-level", "DEBUG", "--allow-path", str(images))
    client = Client(path)
    client.execute("qmp_capabilities")
    client.execute("query-jobs")
    client.execute("blockdev-add", driver="file", filename="/etc/passwd", **{"node-name": "n"})
    client.sock.sendall(b'{"execute": 1}')
    client.recv()
    client.close()
    daemon.wait_for_log("disconnected")
    assert daemon.stop() == 0
    lines = [line.split(" qmpjobd: ", 1)[1] for line in daemon.lines()]
    assert lines[0].startswith("info: qmpjobd ")
    assert lines[1:] == [
        f"debug: monitor #1 connected on {path}",
        "debug: monitor #1: qmp_capabilities: return",
        "debug: monitor #1: query-jobs: return",
        "warning: refused to open /etc/passwd: not under an allowed directory",
        "debug: monitor #1: blockdev-add: error GenericError:"
        " Path '/etc/passwd' is not under an allowed directory",
        "debug: monitor #1: bad request: error GenericError:"
        " QMP input member 'execute' must be a string",
        "debug: monitor #1 disconnected",
        "info: stopping (SIGTERM)",
    ]


def test_warning_level_is_quiet(sock_dir: Path, daemons: list[Daemon]) -> None:
    path = sock_dir / "s"
    daemon = Daemon(sock_dir, "--socket", str(path), "--log-level", "Warning")
    daemons.append(daemon)
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    Client(path).close()
    assert daemon.stop() == 0
    assert daemon.log() == ""


def test_journal_lines_carry_priorities(sock_dir: Path, start: Callable[..., Daemon]) -> None:
    log_path = sock_dir / "log"
    log_path.write_bytes(b"")
    st = log_path.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    # The daemon's stderr is that very file, opened again by Daemon: same inode.
    daemon = start("--socket", str(sock_dir / "s"), env=env)
    assert daemon.stop() == 0
    lines = daemon.lines()
    assert lines[0].startswith("<6>info: qmpjobd ")
    assert lines[1] == "<6>info: stopping (SIGTERM)"


def test_journal_stream_of_another_file_is_ignored(
    sock_dir: Path, start: Callable[..., Daemon]
) -> None:
    env = {**os.environ, "JOURNAL_STREAM": "1:1"}
    daemon = start("--socket", str(sock_dir / "s"), env=env)
    assert daemon.stop() == 0
    assert re.match(_STAMP, daemon.lines()[0])


# -- --daemonize ---------------------------------------------------------------


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_daemonize_returns_once_listening(sock_dir: Path) -> None:
    path = sock_dir / "s"
    pidfile = sock_dir / "pid"
    proc = subprocess.run(
        _command("--socket", str(path), "--pidfile", str(pidfile), "--daemonize"),
        capture_output=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stdout) == (0, b"")
    pid = int(pidfile.read_text())
    # The start line still reaches the terminal; then the daemon lets go of it.
    assert re.fullmatch(
        rf"{_STAMP} qmpjobd: info: qmpjobd \S+ \(QEMU 10\.0\.0\) started, pid {pid},"
        rf" listening on {re.escape(str(path))}\n",
        proc.stderr.decode(),
    )
    try:
        client = Client(path)  # listening as soon as the command returned
        assert client.execute("qmp_capabilities") == {"return": {}}
        # A session leader's child: no controlling terminal can come back.
        stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat_fields[3]) != pid  # session id (field 6) is not its own pid
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        client.close()
    finally:
        os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
    assert _tree(sock_dir) == []


def test_daemonize_fails_with_the_start_up_error(sock_dir: Path) -> None:
    path = sock_dir / "missing" / "s"
    assert _fails(sock_dir, "--socket", str(path), "--daemonize") == (
        f"qmpjobd: Failed to bind socket to {path}: No such file or directory\n"
    )


def test_daemonize_with_relative_paths(sock_dir: Path) -> None:
    # The daemon leaves its working directory; relative paths still mean
    # what they meant where it was started.
    proc = subprocess.run(
        _command("--socket", "rel.sock", "--pidfile", "pid", "--daemonize"),
        capture_output=True,
        timeout=30,
        cwd=sock_dir,
    )
    assert proc.returncode == 0
    pid = int((sock_dir / "pid").read_text())
    try:
        Client(sock_dir / "rel.sock").close()
    finally:
        os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
    assert _tree(sock_dir) == []
