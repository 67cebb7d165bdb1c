"""Targets: a server command started on fresh socket paths, or a running socket.

A target spec on the command line is one of

* ``qmpjobd`` — ``python -m qmpjobd --socket {sock}``; many monitors share one socket;
* ``qmpjobd-state`` — the same with ``--state-dir`` (a fresh folder): the ledger's cost;
* ``qemu`` — ``qemu-storage-daemon`` with one chardev+monitor per socket
  (QEMU takes one client per chardev, so K monitors need K sockets);
* ``NAME=sock:PATH`` — a server already listening on PATH (not started or
  stopped here; all monitors connect to PATH);
* ``NAME=cmd:COMMAND`` — a command with ``{sock}`` in it, multiplexing monitors
  on one socket like qmpjobd.

Servers are started here and stopped by their process id only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import SyncQMP


@dataclass
class TargetSpec:
    name: str
    #: "qmpjobd" | "qmpjobd-state" | "qemu" | "cmd" | "sock"
    kind: str
    value: str = ""

    @property
    def one_socket_per_monitor(self) -> bool:
        return self.kind == "qemu"

    def available(self) -> str | None:
        """Why this target cannot run here, or None."""
        if self.kind == "qemu" and shutil.which("qemu-storage-daemon") is None:
            return "qemu-storage-daemon not installed"
        if self.kind == "sock" and not Path(self.value).exists():
            return f"no socket at {self.value}"
        return None


def parse_targets(text: str) -> list[TargetSpec]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item in ("qmpjobd", "qmpjobd-state", "qemu"):
            out.append(TargetSpec(item, item))
            continue
        name, _, rest = item.partition("=")
        kind, _, value = rest.partition(":")
        if not name or kind not in ("sock", "cmd") or not value:
            raise ValueError(
                f"bad target {item!r}: use qmpjobd, qmpjobd-state, qemu, NAME=sock:PATH"
                " or NAME=cmd:COMMAND"
            )
        out.append(TargetSpec(name, kind, value))
    if not out:
        raise ValueError("no targets")
    return out


def peer_pid(path: str) -> int | None:
    """The process id of whoever listens on *path* (SO_PEERCRED)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, _, _ = struct.unpack("3i", cred)
            # Let the server see the close before anyone else connects.
            s.recv(1 << 16)
            return int(pid)
    except OSError:
        return None


@dataclass
class Running:
    """A started (or attached) server."""

    spec: TargetSpec
    sockets: list[str]
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    tmpdir: str | None = None
    commands: set[str] = field(default_factory=set)

    def sock(self, i: int = 0) -> str:
        """The socket path for monitor number *i*."""
        if len(self.sockets) == 1:
            return self.sockets[0]
        return self.sockets[i % len(self.sockets)]

    def monitor_after_first(self, i: int) -> str:
        """The socket for monitor *i* counting from the second (the first is the controller's)."""
        return self.sock(i + 1)

    @property
    def monitors(self) -> int:
        """How many monitors may be connected at once (0: no limit)."""
        return len(self.sockets) if self.spec.one_socket_per_monitor else 0

    def has(self, command: str) -> bool:
        return command in self.commands

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


#: qmpjobd runs as the release of the reference daemon (qemu-storage-daemon
#: on PATH: 7.2), so both do the same work per job.
_QMPJOBD = [sys.executable, "-m", "qmpjobd", "--qemu-version", "7.2"]


def _command(spec: TargetSpec, sockets: list[str]) -> list[str]:
    if spec.kind == "qmpjobd":
        return [*_QMPJOBD, "--socket", sockets[0]]
    if spec.kind == "qmpjobd-state":
        # The server runs in its temporary folder: the state directory is new.
        return [*_QMPJOBD, "--socket", sockets[0], "--state-dir", "state"]
    if spec.kind == "qemu":
        argv = ["qemu-storage-daemon"]
        for i, path in enumerate(sockets):
            argv += [
                "--chardev",
                f"socket,id=m{i},path={path},server=on,wait=off",
                "--monitor",
                f"chardev=m{i}",
            ]
        return argv
    return shlex.split(spec.value.replace("{sock}", shlex.quote(sockets[0])))


def _first_connection(run: Running) -> SyncQMP:
    """Connect to a server whose socket exists: it may not listen yet (the
    file appears at bind, before listen)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return SyncQMP(run.sock(0))
        except ConnectionRefusedError:
            if time.monotonic() > deadline or (
                run.proc is not None and run.proc.poll() is not None
            ):
                run.stop()
                raise
            time.sleep(0.005)


def start(spec: TargetSpec, monitors: int = 1) -> Running:
    """Start *spec* with room for *monitors* monitors at once (one socket for
    servers that multiplex), wait until it greets, and learn its commands."""
    if spec.kind == "sock":
        run = Running(spec, [spec.value], peer_pid(spec.value))
    else:
        tmpdir = tempfile.mkdtemp(prefix="qmpbench-")
        n = max(1, monitors) if spec.one_socket_per_monitor else 1
        sockets = [os.path.join(tmpdir, f"m{i}.sock") for i in range(n)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        # stderr goes to a file: a pipe nobody reads could stall a chatty server.
        with open(os.path.join(tmpdir, "stderr.log"), "wb") as err:
            proc = subprocess.Popen(
                _command(spec, sockets),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=tmpdir,
            )
        run = Running(spec, sockets, proc.pid, proc, tmpdir)
        deadline = time.monotonic() + 30
        while not all(os.path.exists(p) for p in (sockets[0], sockets[-1])):
            if proc.poll() is not None:
                text = Path(tmpdir, "stderr.log").read_text(errors="replace")
                raise RuntimeError(
                    f"{spec.name} exited with {proc.returncode}: {text.strip()[:500]}"
                )
            if time.monotonic() > deadline:
                run.stop()
                raise RuntimeError(f"{spec.name} did not create its socket in 30 s")
            time.sleep(0.005)
    try:
        conn = _first_connection(run)
        try:
            run.commands = {c["name"] for c in conn.execute("query-commands")}
        finally:
            conn.close()
    except BaseException:
        run.stop()  # not left running when it cannot be used
        raise
    return run
