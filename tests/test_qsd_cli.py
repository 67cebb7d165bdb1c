"""qemu-storage-daemon's command line: --blockdev (keyval and JSON),
--chardev, --monitor, --pidfile, --daemonize; unimplemented options refused.

Where qemu-storage-daemon is installed, the same command lines run under
both programs and must give the same nodes, or the same error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.errors import ConfigError
from qmpjobd.keyval import parse_keyval, parse_opts

QEMU = shutil.which("qemu-storage-daemon")

# -- keyval --------------------------------------------------------------------


def test_keyval_commas_nesting_implied_key_and_lists() -> None:
    assert parse_keyval("null-co,node-name=n,,x,size=0x10", "driver") == {
        "driver": "null-co",
        "node-name": "n,x",
        "size": "0x10",
    }
    assert parse_keyval("driver=raw,file.driver=file,file.filename=a,,b", "driver") == {
        "driver": "raw",
        "file": {"driver": "file", "filename": "a,b"},
    }
    assert parse_keyval("e.1.x=b,e.0.x=a,e.0.y=c") == {"e": [{"x": "a", "y": "c"}, {"x": "b"}]}
    assert parse_keyval("a=1,a=2") == {"a": "2"}  # the last one wins
    assert parse_keyval("driver=null-co,,node-name=x", "driver") == {
        "driver": "null-co,node-name=x"
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("driver=null-co,node-name", "Expected '=' after parameter 'node-name'"),
        ("driver=null-co,a..b=1", "Invalid parameter 'a..b'"),
        ("e.0.x=a,e.2.x=b", "Parameter 'e.1' missing"),
        ("a=1,a.b=2", "Parameters 'a.*' used inconsistently"),
        ("a.b=2,a=1", "Parameters 'a.*' used inconsistently"),
    ],
)
def test_keyval_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keyval(text, "driver")
    assert str(info.value) == message


def test_qemu_opts_flags() -> None:
    assert parse_opts("socket,id=m,path=/a,,b,server,nowait", "backend") == {
        "backend": "socket",
        "id": "m",
        "path": "/a,b",
        "server": "on",
        "wait": "off",
    }


# -- real daemons --------------------------------------------------------------


def _qsd_args(directory: Path, *blockdevs: str) -> list[str]:
    args = []
    for blockdev in blockdevs:
        args += ["--blockdev", blockdev]
    return [
        *args,
        "--chardev",
        f"socket,id=m0,path={directory / 'qmp.sock'},server=on,wait=off",
        "--monitor",
        "chardev=m0",
        "--pidfile",
        str(directory / "pid"),
        "--daemonize",
    ]


def _nodes(path: Path) -> list[tuple[str, str, int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        lines = sock.makefile("rb")
        lines.readline()
        sock.sendall(b'{"execute": "qmp_capabilities"}')
        lines.readline()
        sock.sendall(b'{"execute": "query-named-block-nodes"}')
        reply: dict[str, Any] = json.loads(lines.readline())
        lines.close()
    return sorted(
        (node["node-name"], node["drv"], node["image"]["virtual-size"]) for node in reply["return"]
    )


def _stop(pidfile: Path) -> None:
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pidfile.exists() or Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "daemon did not stop"
        time.sleep(0.02)


BLOCKDEVS = (
    "null-co,node-name=a,size=0x100000",
    '{"driver": "null-co", "node-name": "b", "size": 2097152, "read-zeroes": true}',
    "driver=raw,node-name=r,file.driver=null-co,file.node-name=f,file.size=4096",
    "driver=raw,node-name=r2,file=a,read-only=on",
    "driver=blkdebug,node-name=d,image=b,inject-error.0.event=read_aio,inject-error.0.errno=5",
)


def _run(program: list[str], directory: Path, *blockdevs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*program, *_qsd_args(directory, *blockdevs)],
        capture_output=True,
        text=True,
        timeout=30,
    )


QMPJOBD = [sys.executable, "-m", "qmpjobd", "--log-level", "warning"]

EXPECTED_NODES = [
    ("a", "null-co", 1048576),
    ("b", "null-co", 2097152),
    ("d", "blkdebug", 2097152),
    ("f", "null-co", 4096),
    ("r", "raw", 4096),
    ("r2", "raw", 1048576),
]


def test_qemu_storage_daemon_command_line_starts_qmpjobd(sock_dir: Path) -> None:
    proc = _run(QMPJOBD, sock_dir, *BLOCKDEVS)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    try:
        assert _nodes(sock_dir / "qmp.sock") == EXPECTED_NODES
    finally:
        _stop(sock_dir / "pid")
    assert sorted(os.listdir(sock_dir)) == []


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="no qemu-storage-daemon")
def test_same_command_line_same_nodes_as_qemu(sock_dir: Path) -> None:
    assert QEMU is not None
    (sock_dir / "qemu").mkdir()
    proc = _run([QEMU], sock_dir / "qemu", *BLOCKDEVS)
    assert (proc.returncode, proc.stderr) == (0, "")
    try:
        assert _nodes(sock_dir / "qemu" / "qmp.sock") == EXPECTED_NODES
    finally:
        _stop(sock_dir / "qemu" / "pid")


BAD_BLOCKDEVS = [
    "driver=null-co,node-name=x,size=abc",
    "driver=null-co,node-name=x,size=1k",
    "driver=null-co,node-name=x,read-only=maybe",
    "driver=null-co,node-name=x,bogus=1",
    "driver=null-co,node-name=1x",
    '{"driver":"null-co","node-name":"x","size":"12"}',
    "driver=raw,node-name=r,file.driver=null-co,file.size=1024,,5",
    "driver=null-co,,node-name=x",
    "driver=null-co,node-name",
    "driver=null-co,node-name=x,a..b=1",
    "driver=blkdebug,node-name=b,image.driver=null-co,inject-error.0.event=read_aio,"
    "inject-error.2.event=read_aio",
]


@pytest.mark.parametrize("blockdev", BAD_BLOCKDEVS)
def test_bad_blockdev_is_one_line(sock_dir: Path, blockdev: str) -> None:
    proc = _run(QMPJOBD, sock_dir, blockdev)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"qmpjobd: --blockdev {blockdev}: ")
    assert proc.stderr.count("\n") == 1
    assert os.listdir(sock_dir) == []
    if QEMU is not None:  # word for word what qemu-storage-daemon says
        qemu = _run([QEMU], sock_dir, blockdev)
        assert qemu.returncode == 1
        assert proc.stderr.removeprefix("qmpjobd:") == qemu.stderr.removeprefix(
            "qemu-storage-daemon:"
        )


def test_duplicate_node_is_refused(sock_dir: Path) -> None:
    proc = _run(QMPJOBD, sock_dir, "null-co,node-name=x", "driver=null-co,node-name=x")
    assert proc.returncode == 1
    assert proc.stderr == (
        "qmpjobd: --blockdev driver=null-co,node-name=x: Duplicate nodes with node-name='x'\n"
    )
    assert os.listdir(sock_dir) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--export", "type=nbd,id=e,node-name=x"],
            "--export type=nbd,id=e,node-name=x: --export is not implemented",
        ),
        (
            ["--nbd-server", "addr.type=unix,addr.path=/x"],
            "--nbd-server addr.type=unix,addr.path=/x: --nbd-server is not implemented",
        ),
        (["--object", "iothread,id=t"], "--object iothread,id=t: --object is not implemented"),
        (["--monitor", "chardev=nope"], '--monitor chardev=nope: chardev "nope" not found'),
        (
            [
                "--chardev",
                "socket,id=m,path=/x.sock,server=on,wait=off",
                "--monitor",
                "m,mode=readline",
            ],
            "--monitor m,mode=readline: Only QMP is supported",
        ),
        (
            ["--chardev", "socket,id=m,path=/x.sock,server=on"],
            "--chardev socket,id=m,path=/x.sock,server=on: only wait=off is implemented",
        ),
        (
            ["--chardev", "socket,id=m,host=localhost,port=4444,server=on,wait=off"],
            "--chardev socket,id=m,host=localhost,port=4444,server=on,wait=off:"
            " only Unix socket chardevs (path=PATH) are implemented",
        ),
        (
            ["--chardev", "socket,id=m,path=/x.sock,server=on,wait=off"],
            "--chardev socket,id=m,path=/x.sock,server=on,wait=off:"
            " only chardevs used by a --monitor are implemented",
        ),
        (
            ["--chardev", "file,id=m,path=/x"],
            "--chardev file,id=m,path=/x: chardev backend 'file' is not implemented (only socket)",
        ),
    ],
)
def test_unimplemented_options_fail_with_one_line(
    sock_dir: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run([*QMPJOBD, *args], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (1, f"qmpjobd: {message}\n")
    assert os.listdir(sock_dir) == []


def test_chardev_flags_and_monitor_share_sockets_with_socket_option(sock_dir: Path) -> None:
    proc = subprocess.run(
        [
            *QMPJOBD,
            "--socket",
            str(sock_dir / "plain.sock"),
            "--chardev",
            f"socket,id=m,path={sock_dir / 'm.sock'},server,nowait",
            "--monitor",
            "m",
            "--pidfile",
            str(sock_dir / "pid"),
            "--daemonize",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    try:
        assert _nodes(sock_dir / "plain.sock") == []
        assert _nodes(sock_dir / "m.sock") == []
    finally:
        _stop(sock_dir / "pid")
