"""``--compat``: QEMU's -compat policy for deprecated and unstable interfaces.

Each policy value is tried on a deprecated command (drive-backup), a
deprecated enum value (the transaction action drive-backup), a deprecated
output member (the enums' ``values`` in query-qmp-schema) and an unstable
member (x-perf). The texts are qemu-system's (``-M none -compat ...``); a
live comparison runs when qemu-system-x86_64 is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.compat import CompatPolicy

REPO = Path(__file__).resolve().parents[1]


def _qemu_system(profile: str) -> str | None:
    """qemu-system of the release: 7.2 on PATH, 10.0 unpacked beside its
    qemu-storage-daemon (``.qemu-10.0/``), or ``QMPJOBD_QEMU_SYSTEM_<release>``."""
    env = os.environ.get("QMPJOBD_QEMU_SYSTEM_" + profile.replace(".", "_"))
    if env:
        return env
    if profile == "7.2":
        return shutil.which("qemu-system-x86_64")
    local = REPO / f".qemu-{profile}" / "usr" / "bin" / "qemu-system-x86_64"
    return str(local) if local.is_file() else None


QEMU_SYSTEM = {p: _qemu_system(p) for p in ("7.2", "10.0")}
LIVE = [
    pytest.param(
        p, marks=pytest.mark.skipif(b is None, reason=f"qemu-system-x86_64 {p} not installed")
    )
    for p, b in QEMU_SYSTEM.items()
]

DRIVE_BACKUP = {
    "execute": "drive-backup",
    "arguments": {"device": "s", "target": "/nonexistent/x.img", "sync": "full", "format": "raw"},
}
TXN_DRIVE_BACKUP = {
    "execute": "transaction",
    "arguments": {"actions": [{"type": "drive-backup", "data": DRIVE_BACKUP["arguments"]}]},
}
X_PERF = {
    "execute": "blockdev-backup",
    "arguments": {"device": "s", "target": "nope", "sync": "full", "x-perf": {"max-workers": 2}},
}
X_PERF_LATE = {"execute": "blockdev-backup", "arguments": {"x-perf": {}, "device": "s"}}
ADD_S = {
    "execute": "blockdev-add",
    "arguments": {"driver": "null-co", "node-name": "s", "size": 65536},
}


class Daemon:
    """A daemon in a process of its own (``crash`` aborts it)."""

    def __init__(self, argv: list[str], sock: str, proc: subprocess.Popen[bytes]) -> None:
        self.argv = argv
        self.sock = sock
        self.proc = proc
        self.conn = socket.socket(socket.AF_UNIX)
        self.conn.settimeout(10)
        for _ in range(200):
            try:
                self.conn.connect(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        self.file = self.conn.makefile("rwb")
        self.file.readline()  # greeting
        assert self.execute({"execute": "qmp_capabilities"}) == {"return": {}}

    def execute(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, events skipped; None if the connection closed."""
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            try:
                line = self.file.readline()
            except ConnectionResetError:
                return None
            if not line:
                return None
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    def close(self) -> int:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


def _start(argv: list[str]) -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="qmpc-") as tmp:
        sock = os.path.join(tmp, "s")
        full = [a.replace("{sock}", sock) for a in argv]
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            daemon = Daemon(full, sock, proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        try:
            yield daemon
        finally:
            daemon.close()
            if proc.stderr is not None:
                proc.stderr.close()


def qmpjobd(compat: str, profile: str = "7.2") -> Iterator[Daemon]:
    argv = [sys.executable, "-m", "qmpjobd", "--socket", "{sock}", "--qemu-version", profile]
    return _start([*argv, *(["--compat", compat] if compat else [])])


def qemu_system(compat: str, profile: str) -> Iterator[Daemon]:
    binary = QEMU_SYSTEM[profile]
    assert binary is not None
    argv = [binary, "-M", "none", "-nodefaults", "-display", "none"]
    argv += ["-qmp", "unix:{sock},server=on,wait=off"]
    return _start([*argv, *(["-compat", compat] if compat else [])])


def _error(desc: str, cls: str = "GenericError") -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


REJECTED_COMMAND = _error("Deprecated command drive-backup disabled by policy", "CommandNotFound")
REJECTED_VALUE = _error("Deprecated value drive-backup disabled by policy")
REJECTED_MEMBER = _error("Unstable parameter x-perf disabled by policy")


# ------------------------------------------------------------------ parsing


def test_parse_the_option_like_qemu() -> None:
    assert CompatPolicy.parse("") == CompatPolicy()
    policy = CompatPolicy.parse("deprecated-input=reject,unstable-output=hide")
    assert policy == CompatPolicy(deprecated_input="reject", unstable_output="hide")
    with pytest.raises(ValueError, match=r"^Parameter 'foo' is unexpected$"):
        CompatPolicy.parse("foo=1")
    with pytest.raises(
        ValueError, match=r"^Parameter 'deprecated-output' does not accept value 'reject'$"
    ):
        CompatPolicy.parse("deprecated-output=reject")


def test_a_bad_option_stops_the_daemon_with_qemus_text(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qmpjobd", "--socket", str(tmp_path / "s"), "--compat", "x=1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr == "qmpjobd: --compat x=1: Parameter 'x' is unexpected\n"


# ------------------------------------------------------------------ input


def _replies(daemon: Daemon) -> list[dict[str, Any] | None]:
    assert daemon.execute(ADD_S) == {"return": {}}
    return [daemon.execute(r) for r in (DRIVE_BACKUP, TXN_DRIVE_BACKUP, X_PERF, X_PERF_LATE)]


ACCEPTED = [
    _error("Could not create '/nonexistent/x.img': No such file or directory"),
    _error("Could not create '/nonexistent/x.img': No such file or directory"),
    _error("Cannot find device='nope' nor node-name='nope'"),
    _error("Parameter 'sync' is missing"),
]


@pytest.mark.parametrize("profile", ["7.2", "10.0"])
@pytest.mark.parametrize(
    ("compat", "expected"),
    [
        ("", ACCEPTED),
        ("deprecated-input=accept,unstable-input=accept", ACCEPTED),
        ("deprecated-input=reject", [REJECTED_COMMAND, REJECTED_VALUE, *ACCEPTED[2:]]),
        ("unstable-input=reject", [*ACCEPTED[:2], REJECTED_MEMBER, ACCEPTED[3]]),
        # The member is checked when the walk reaches it: a missing one first.
        (
            "deprecated-input=reject,unstable-input=reject",
            [REJECTED_COMMAND, REJECTED_VALUE, REJECTED_MEMBER, ACCEPTED[3]],
        ),
    ],
)
def test_input_policies(profile: str, compat: str, expected: list[Any]) -> None:
    for daemon in qmpjobd(compat, profile):
        assert _replies(daemon) == expected


@pytest.mark.parametrize(
    ("compat", "request_"),
    [
        ("deprecated-input=crash", DRIVE_BACKUP),
        ("deprecated-input=crash", TXN_DRIVE_BACKUP),
        ("unstable-input=crash", X_PERF),
    ],
)
def test_crash_aborts_the_daemon(compat: str, request_: dict[str, Any]) -> None:
    for daemon in qmpjobd(compat):
        assert daemon.execute(ADD_S) == {"return": {}}
        assert daemon.execute(request_) is None
        assert daemon.proc.wait(10) == -signal.SIGABRT


# ------------------------------------------------------------------ output


def _schema(daemon: Daemon) -> dict[str, dict[str, Any]]:
    reply = daemon.execute({"execute": "query-qmp-schema"})
    assert reply is not None
    return {e["name"]: e for e in reply["return"]}


def _txn_kinds(schema: dict[str, dict[str, Any]]) -> dict[str, Any]:
    arg = schema[schema["transaction"]["arg-type"]]
    actions = schema[next(m["type"] for m in arg["members"] if m["name"] == "actions")]
    action = schema[actions["element-type"]]
    return schema[next(m["type"] for m in action["members"] if m["name"] == "type")]


def _x_perf(schema: dict[str, dict[str, Any]]) -> dict[str, Any]:
    arg = schema[schema["blockdev-backup"]["arg-type"]]
    return next(m for m in arg["members"] if m["name"] == "x-perf")


@pytest.mark.parametrize("compat", ["", "deprecated-output=accept", "unstable-output=hide"])
def test_output_shows_the_features(compat: str) -> None:
    """unstable-output=hide hides nothing in query-qmp-schema, as in QEMU 7.2."""
    for daemon in qmpjobd(compat):
        schema = _schema(daemon)
        assert schema["drive-backup"]["features"] == ["deprecated"]
        kinds = _txn_kinds(schema)
        assert kinds["values"] == ["abort", "blockdev-backup", "drive-backup"]
        assert kinds["members"][-1] == {"name": "drive-backup", "features": ["deprecated"]}
        assert _x_perf(schema)["features"] == ["unstable"]


def test_deprecated_output_hide() -> None:
    """Deprecated commands, enum values and SchemaInfoEnum's values leave the schema."""
    for daemon in qmpjobd("deprecated-output=hide"):
        schema = _schema(daemon)
        assert "drive-backup" not in schema
        kinds = _txn_kinds(schema)
        assert kinds == {
            "name": kinds["name"],
            "members": [{"name": "abort"}, {"name": "blockdev-backup"}],
            "meta-type": "enum",
        }
        assert _x_perf(schema)["features"] == ["unstable"]
        assert not any("values" in e for e in schema.values())
        # Still listed by query-commands, and still runs.
        names = {c["name"] for c in (daemon.execute({"execute": "query-commands"}) or {})["return"]}
        assert "drive-backup" in names


# ------------------------------------------------------------------ live


@pytest.mark.qemu
@pytest.mark.parametrize("profile", LIVE)
@pytest.mark.parametrize(
    "compat",
    [
        "",
        "deprecated-input=reject",
        "unstable-input=reject",
        "deprecated-input=reject,unstable-input=reject",
    ],
)
def test_input_texts_match_qemu_system(profile: str, compat: str) -> None:
    """The replies that carry a policy's text match qemu-system's."""
    for qemu in qemu_system(compat, profile):
        live = _replies(qemu)
    for daemon in qmpjobd(compat, profile):
        ours = _replies(daemon)
    policy_texts = ("disabled by policy", "is missing")
    for theirs, mine in zip(live, ours, strict=True):
        assert theirs is not None and mine is not None
        if any(t in theirs.get("error", {}).get("desc", "") for t in policy_texts):
            assert mine == theirs


@pytest.mark.qemu
@pytest.mark.parametrize("profile", LIVE)
def test_crash_matches_qemu_system(profile: str) -> None:
    for qemu in qemu_system("deprecated-input=crash", profile):
        assert qemu.execute(ADD_S) == {"return": {}}
        assert qemu.execute(DRIVE_BACKUP) is None
        assert qemu.proc.wait(10) == -signal.SIGABRT


@pytest.mark.qemu
@pytest.mark.parametrize("profile", LIVE)
@pytest.mark.parametrize("compat", ["deprecated-output=hide", "unstable-output=hide"])
def test_schema_output_matches_qemu_system(profile: str, compat: str) -> None:
    """What each output policy hides from query-qmp-schema, as qemu-system hides it."""

    def seen(schema: dict[str, dict[str, Any]]) -> tuple[bool, Any, Any, bool]:
        kinds = _txn_kinds(schema)
        return (
            "drive-backup" in schema,
            kinds["members"],
            _x_perf(schema).get("features"),
            any("values" in e for e in schema.values()),
        )

    for qemu in qemu_system(compat, profile):
        theirs = seen(_schema(qemu))
    for daemon in qmpjobd(compat, profile):
        mine = seen(_schema(daemon))
    # qemu-system has more transaction actions: compare the ones qmpjobd has.
    names = [m["name"] for m in mine[1]]
    assert (theirs[0], [m for m in theirs[1] if m["name"] in names], *theirs[2:]) == mine
