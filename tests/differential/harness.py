"""Run scenarios against a QMP server and record transcripts.

Two targets:

* :class:`QemuTarget` starts ``qemu-storage-daemon`` with one socket chardev
  and one monitor per scenario connection (a QEMU monitor socket serves a
  single client).  The listening sockets are bound here and handed to QEMU
  as file descriptors (``--chardev socket,fd=N,server=on,wait=off``), so
  connecting never races with socket creation.  One extra *readiness*
  monitor comes last: the harness waits for its greeting and one round trip
  before any scenario connection is made, because a client that connects
  while QEMU is still setting its monitors up can get the greeting twice and
  lose the start of its input.
* :class:`QmpjobdTarget` starts ``python -m qmpjobd --socket PATH``
  (``--qemu-version`` for a chosen profile); every connection goes to that
  one socket.

Profiles: every QEMU release qmpjobd emulates has a live reference, found by
:func:`qemu_binary`. Golden transcripts recorded from the base release live
in ``tests/golden/``; a scenario whose transcript differs on another release
(or that only applies to it) has that release's transcript in
``tests/golden/<release>/``, which :func:`load_golden` prefers.

Both are context managers and stop their process by pid.  The runner is
plain blocking socket code: a scenario is sequential by nature, and the only
waits are ``select`` calls bounded by the step's deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from .model import (
    JSON,
    UNSET,
    Expect,
    Scenario,
    Step,
    bytes_to_text,
    is_event,
    is_reply,
    strict_equal,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"

#: The release the shared golden files are recorded from.
BASE_PROFILE = "7.2"
#: Every release with a live reference: the differential suite's profiles.
LIVE_PROFILES = ("7.2", "10.0")


def qemu_binary(profile: str) -> str | None:
    """The live ``qemu-storage-daemon`` of a release, or None.

    ``QMPJOBD_QSD_<release, dots as underscores>`` names it (for example
    ``QMPJOBD_QSD_10_0``); otherwise 7.2 is the one on ``PATH`` (Debian
    bookworm's) and a newer one is the binary unpacked into
    ``.qemu-<release>/`` of the checkout (``.ci/run`` puts it there).
    """
    env = os.environ.get("QMPJOBD_QSD_" + profile.replace(".", "_"))
    if env:
        return env
    if profile == BASE_PROFILE:
        return shutil.which("qemu-storage-daemon")
    local = REPO_ROOT / f".qemu-{profile}" / "usr" / "bin" / "qemu-storage-daemon"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


FINAL_QUIET_MS = 50
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 3
READY = 99  # connection number of QEMU's readiness monitor
# In sent bytes, stands for a per-run folder for image files; in received
# messages, that folder's path is written back as the placeholder, so
# transcripts do not depend on where the run happened.
TMP_PLACEHOLDER = b"{tmp}"

# Golden transcripts hold ids nested 1024 deep; the json module and the
# comparison recurse once per level.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))


class TargetError(Exception):
    """The server under test could not be started or reached."""


class Target(Protocol):
    name: str

    def socket_path(self, conn: int) -> str: ...

    def files_dir(self) -> str: ...

    def describe(self) -> str: ...


def _short_tempdir() -> tempfile.TemporaryDirectory[str]:
    # Unix socket paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    return tempfile.TemporaryDirectory(prefix="qmpd-")


def _files_dir(base: str) -> str:
    """The per-run folder that the ``{tmp}`` placeholder stands for (created on demand)."""
    path = os.path.join(base, "files")
    os.makedirs(path, exist_ok=True)
    return path


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class QemuTarget:
    """A fresh qemu-storage-daemon with ``connections`` monitor sockets."""

    def __init__(self, connections: int, binary: str | None = None) -> None:
        found = binary or shutil.which("qemu-storage-daemon")
        if found is None:
            raise TargetError("qemu-storage-daemon not found")
        self.binary = found
        self.connections = connections
        self.name = "qemu-storage-daemon"
        self._tmp = _short_tempdir()
        self._proc: subprocess.Popen[bytes] | None = None

    def socket_path(self, conn: int) -> str:
        return os.path.join(self._tmp.name, f"m{conn}.sock")

    def files_dir(self) -> str:
        return _files_dir(self._tmp.name)

    def describe(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, check=True, text=True
        ).stdout
        return out.splitlines()[0].strip()

    def __enter__(self) -> QemuTarget:
        # Now and then QEMU 7.2 never answers its first monitor after start-up
        # (seen under load); a fresh daemon does. Try a few.
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start()
            except TargetError:
                if attempt == START_ATTEMPTS - 1:
                    raise
                # The failed start cleaned up after itself: begin afresh.
                self._tmp = _short_tempdir()
                self._proc = None
        raise AssertionError("unreachable")

    def _start(self) -> QemuTarget:
        listeners = []
        args = [self.binary]
        try:
            for k in [*range(self.connections), READY]:
                ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(ls)
                ls.bind(self.socket_path(k))
                ls.listen(4)
                args += [
                    "--chardev",
                    f"socket,id=m{k},fd={ls.fileno()},server=on,wait=off",
                    "--monitor",
                    f"chardev=m{k}",
                ]
            self._proc = subprocess.Popen(
                args,
                pass_fds=[ls.fileno() for ls in listeners],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            for ls in listeners:
                ls.close()
        try:
            self._wait_until_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(START_TIMEOUT_S)
            probe.connect(self.socket_path(READY))
            data = b""
            try:
                for request in (b"", b'{"execute": "query-version", "id": "ready"}\n'):
                    probe.sendall(request)
                    while not data.endswith(b"\r\n"):
                        chunk = probe.recv(4096)
                        if not chunk:
                            raise TargetError(self._exit_message("closed the readiness monitor"))
                        data += chunk
                    data = b""
            except TimeoutError:
                raise TargetError(self._exit_message("did not answer in time")) from None

    def _exit_message(self, what: str) -> str:
        assert self._proc is not None and self._proc.stderr is not None
        _stop_process(self._proc)
        err = self._proc.stderr.read().decode(errors="replace")
        return f"qemu-storage-daemon {what} (status {self._proc.returncode}):\n{err}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
        self._tmp.cleanup()


class QmpjobdTarget:
    """A fresh ``python -m qmpjobd --socket PATH``; all connections share the socket."""

    def __init__(
        self, python: str | None = None, root: Path = REPO_ROOT, profile: str | None = None
    ) -> None:
        self.python = python or sys.executable
        self.root = root
        self.profile = profile
        self.name = "qmpjobd"
        self._tmp = _short_tempdir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = Path(self._tmp.name) / "stderr.txt"

    def socket_path(self, conn: int) -> str:
        return os.path.join(self._tmp.name, "qmp.sock")

    def files_dir(self) -> str:
        return _files_dir(self._tmp.name)

    def describe(self) -> str:
        return "qmpjobd"

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self._stderr.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def __enter__(self) -> QmpjobdTarget:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), env.get("PYTHONPATH", "")) if p
        )
        with self._stderr.open("wb") as err:
            self._proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "qmpjobd",
                    "--socket",
                    self.socket_path(0),
                    "--allow-path",
                    self.files_dir(),
                    *(["--qemu-version", self.profile] if self.profile else []),
                ],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            self._wait_until_accepting()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_accepting(self) -> None:
        # The daemon offers no readiness signal, so try to connect with a
        # growing back-off until a deadline, giving up at once if it exits.
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.005
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise TargetError(
                    f"qmpjobd exited with status {rc} before accepting connections:\n"
                    + self.stderr_tail()
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket_path(0))
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                # This probe connection is dropped unread; the daemon must cope.
                return
            finally:
                probe.close()
            if time.monotonic() > deadline:
                raise TargetError(
                    f"qmpjobd did not accept connections within {START_TIMEOUT_S} s:\n"
                    + self.stderr_tail()
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
        self._tmp.cleanup()


# ---------------------------------------------------------------- connections


@dataclass
class _Conn:
    sock: socket.socket
    tmp: bytes = b""  # the per-run folder, written back as the ``{tmp}`` placeholder
    buf: bytes = b""
    eof: bool = False
    closed: bool = False
    pending: list[JSON] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            crlf = self.buf.find(b"\r\n")
            lf = self.buf.find(b"\n")
            if lf != -1 and (crlf == -1 or lf < crlf):
                line, self.buf = self.buf[:lf], self.buf[lf + 1 :]
                self.pending.append(
                    {"__harness__": "message not terminated by CRLF", "line": _show(line)}
                )
                continue
            if crlf == -1:
                return
            line, self.buf = self.buf[:crlf], self.buf[crlf + 2 :]
            if self.tmp:
                line = line.replace(self.tmp, TMP_PLACEHOLDER)
            self.pending.append(_parse_line(line))

    def finish(self) -> None:
        self.eof = True
        if self.buf:
            self.pending.append(
                {"__harness__": "unterminated data before EOF", "line": _show(self.buf)}
            )
            self.buf = b""


def _show(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _parse_line(line: bytes) -> JSON:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return {"__harness__": "non-ASCII output", "line": _show(line)}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"__harness__": f"unparseable output: {exc}", "line": text}
    if not isinstance(value, dict):
        return {"__harness__": "output is not an object", "line": text}
    return value


def _satisfied(expect: Expect, got: list[JSON], conn: _Conn) -> bool:
    if expect.messages is not None and len(got) < expect.messages:
        return False
    replies = [m for m in got if is_reply(m)]
    if expect.replies is not None and len(replies) < expect.replies:
        return False
    if expect.reply_id is not UNSET and not any(
        "id" in m and strict_equal(m["id"], expect.reply_id) for m in replies
    ):
        return False
    if expect.events:
        todo = list(expect.events)
        for m in got:
            if todo and is_event(m) and todo[0].matches(m):
                todo.pop(0)
        if todo:
            return False
    return not (expect.eof and not conn.eof)


class Runner:
    """Runs one scenario against one started target."""

    def __init__(self, scenario: Scenario, target: Target) -> None:
        self.scenario = scenario
        self.target = target
        self.conns: dict[int, _Conn] = {}
        self.selector = selectors.DefaultSelector()

    def close(self) -> None:
        for conn in self.conns.values():
            if not conn.closed:
                self._close(conn)
        self.selector.close()

    def _close(self, conn: _Conn) -> None:
        if not conn.eof:
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.closed = True

    def _pump(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; True if anything arrived."""
        if not self.selector.get_map():
            return False
        arrived = False
        for key, _ in self.selector.select(max(timeout, 0.0)):
            conn: _Conn = key.data
            try:
                data = conn.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                conn.feed(data)
            else:
                self.selector.unregister(conn.sock)
                conn.finish()
            arrived = True
        return arrived

    def _do(self, step: Step) -> None:
        if step.action == "connect":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.target.socket_path(step.conn))
            sock.setblocking(False)
            conn = _Conn(sock, tmp=self.target.files_dir().encode())
            self.conns[step.conn] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)
        elif step.action == "send":
            conn = self.conns[step.conn]
            for i, chunk in enumerate(step.chunks):
                if i and step.gap_ms:
                    # Deliberate pacing, so the server reads the chunks separately.
                    self._pump(step.gap_ms / 1000)
                tmp = self.target.files_dir().encode()
                _send_all(conn.sock, chunk.replace(TMP_PLACEHOLDER, tmp))
        elif step.action == "close":
            self._close(self.conns[step.conn])
        elif step.action == "run":
            # A program run on the host between requests (qemu-img preparing
            # images), its arguments with {tmp} replaced.
            tmp = self.target.files_dir().encode()
            argv = [bytes_to_text(c.replace(TMP_PLACEHOLDER, tmp)) for c in step.chunks]
            subprocess.run(argv, check=True, capture_output=True)
        else:  # pragma: no cover - guarded by the Step type
            raise ValueError(step.action)

    def _collect(self, expects: Mapping[int, Expect]) -> dict[str, JSON]:
        got: dict[int, list[JSON]] = {k: [] for k in expects}
        timed_out: list[int] = []
        if expects:
            deadline = time.monotonic() + max(e.timeout_s for e in expects.values())
            while True:
                for k in expects:
                    conn = self.conns[k]
                    got[k] += conn.pending
                    conn.pending = []
                waiting = [
                    k for k, e in expects.items() if not _satisfied(e, got[k], self.conns[k])
                ]
                if not waiting:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or all(self.conns[k].eof for k in waiting):
                    timed_out = waiting
                    break
                self._pump(remaining)
            quiet = max(e.quiet_ms for e in expects.values()) / 1000
            if quiet and not timed_out:
                while self._pump(quiet) and time.monotonic() < deadline:
                    pass
                for k in expects:
                    got[k] += self.conns[k].pending
                    self.conns[k].pending = []
        out: dict[str, JSON] = {"received": {str(k): v for k, v in sorted(got.items())}}
        eof = sorted(k for k in expects if self.conns[k].eof)
        if eof:
            out["eof"] = eof
        if timed_out:
            out["timed_out"] = sorted(timed_out)
        return out

    def run(self) -> dict[str, JSON]:
        steps = []
        for step in self.scenario.steps:
            try:
                self._do(step)
            except OSError as exc:
                record = step.to_json()
                record.update({"received": {}, "error": f"{type(exc).__name__}: {exc}"})
                steps.append(record)
                break
            record = step.to_json()
            record.update(self._collect(step.expect))
            steps.append(record)
            if record.get("timed_out"):
                # The server is off script; later steps would only add waiting.
                break
        # Whatever else arrives shortly after the last step is part of the transcript.
        open_conns = {
            k: Expect(quiet_ms=FINAL_QUIET_MS) for k, c in self.conns.items() if not c.closed
        }
        trailing = self._collect(open_conns)["received"] if open_conns else {}
        transcript = self.scenario.to_json()
        transcript["target"] = self.target.describe()
        transcript["steps"] = steps
        transcript["trailing"] = trailing
        return transcript


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except BlockingIOError:
            _wait_writable(sock)
            continue
        view = view[n:]


def _wait_writable(sock: socket.socket) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        sel.select(5.0)


def run_scenario(scenario: Scenario, target: Target) -> dict[str, JSON]:
    runner = Runner(scenario, target)
    try:
        return runner.run()
    finally:
        runner.close()


def run_on_qemu(scenario: Scenario, binary: str | None = None) -> dict[str, JSON]:
    with QemuTarget(scenario.connections, binary) as target:
        return run_scenario(scenario, target)


def run_on_qmpjobd(
    scenario: Scenario, python: str | None = None, profile: str | None = None
) -> dict[str, JSON]:
    with QmpjobdTarget(python, profile=profile) as target:
        return run_scenario(scenario, target)


# ------------------------------------------------------------------ golden files


def golden_path(name: str, directory: Path = GOLDEN_DIR) -> Path:
    return directory / f"{name}.json"


def profile_golden_path(name: str, profile: str, directory: Path = GOLDEN_DIR) -> Path:
    """Where a release's own transcript of a scenario is (shared one: base release)."""
    if profile == BASE_PROFILE:
        return golden_path(name, directory)
    return golden_path(name, directory / profile)


def find_golden(name: str, profile: str = BASE_PROFILE, directory: Path = GOLDEN_DIR) -> Path:
    """The release's own transcript if it has one, else the shared one."""
    own = profile_golden_path(name, profile, directory)
    return own if own.is_file() else golden_path(name, directory)


def load_golden(
    name: str, directory: Path = GOLDEN_DIR, profile: str = BASE_PROFILE
) -> dict[str, Any]:
    """A release's transcript of a scenario: its own, or the shared one with
    the release's major and minor version in every QEMU version object (the
    greeting, ``query-version``)."""
    path = find_golden(name, profile, directory)
    if path == golden_path(name, directory):
        return load_shared_golden(name, directory, profile)
    with path.open(encoding="ascii") as f:
        data: dict[str, Any] = json.load(f)
    return data


def load_shared_golden(
    name: str, directory: Path = GOLDEN_DIR, profile: str = BASE_PROFILE
) -> dict[str, Any]:
    """The shared transcript as the release would show it (its version)."""
    with golden_path(name, directory).open(encoding="ascii") as f:
        data: dict[str, Any] = json.load(f)
    if profile == BASE_PROFILE:
        return data
    major, minor = (int(part) for part in profile.split("."))
    retarget: Any = _retarget(data, major, minor)
    return dict(retarget)


def _retarget(value: Any, major: int, minor: int) -> Any:
    if isinstance(value, list):
        return [_retarget(v, major, minor) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _retarget(v, major, minor) for k, v in value.items()}
    qemu = out.get("qemu")
    if (
        set(out) == {"qemu", "package"}
        and isinstance(qemu, dict)
        and set(qemu) == {"micro", "minor", "major"}
    ):
        out["qemu"] = {**qemu, "major": major, "minor": minor}
    return out


def dump_golden(transcript: Mapping[str, JSON]) -> str:
    return json.dumps(transcript, indent=1, ensure_ascii=True) + "\n"


def golden_names(directory: Path = GOLDEN_DIR, profile: str | None = None) -> Iterator[str]:
    """Scenario names with a transcript (shared, or the release's own), by name.

    With a profile, only those that apply to it (a shared transcript of a
    scenario limited to other releases does not).
    """
    paths = {p.stem: p for p in directory.glob("*.json")}
    if profile is not None and profile != BASE_PROFILE:
        paths.update({p.stem: p for p in (directory / profile).glob("*.json")})
    for name in sorted(paths):
        if profile is not None:
            with paths[name].open(encoding="ascii") as f:
                profiles = json.load(f).get("profiles", ())
            if profiles and profile not in profiles:
                continue
        yield name
