"""Block graph: blockdev-add / blockdev-del semantics, names, and query-named-block-nodes.

Every expected text and object here was recorded from qemu-storage-daemon 7.2.
The ``qemu``-marked test replays the golden scenario on a live daemon, when one
is installed, and compares it with the literal below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.block import BlockGraph
from qmpjobd.errors import ErrorClass, QMPError

# -- the golden scenario -------------------------------------------------------

#: blockdev-add arguments, in order; "{dir}" is the folder holding f1.img and sparse.img.
GOLDEN_OPS: list[dict[str, Any]] = [
    {"driver": "null-co", "node-name": "n0"},
    {"driver": "null-co", "node-name": "n1", "size": 4096, "latency-ns": 5, "read-zeroes": True},
    {"driver": "file", "node-name": "f1", "filename": "{dir}/f1.img"},
    {"driver": "raw", "node-name": "r1", "file": "f1"},
    {
        "driver": "raw",
        "node-name": "r2",
        "file": {"driver": "file", "filename": "{dir}/sparse.img"},
    },
    {
        "driver": "blkdebug",
        "node-name": "d1",
        "image": "n1",
        "inject-error": [{"event": "write_aio", "errno": 28}],
    },
    {
        "driver": "raw",
        "node-name": "r3",
        "file": {"driver": "blkdebug", "image": {"driver": "null-co"}},
    },
    {"driver": "raw", "node-name": "r4", "file": "f1", "offset": 512, "size": 1024},
    {
        "driver": "blkdebug",
        "node-name": "bd3",
        "image": "f1",
        "set-state": [{"event": "write_aio", "new_state": 2, "state": 1}],
        "align": 4096,
    },
    {
        "driver": "blkdebug",
        "node-name": "j2",
        "image": {"driver": "raw", "file": {"driver": "file", "filename": "{dir}/f1.img"}},
        "inject-error": [{"errno": 5, "event": "read_aio"}],
    },
    {
        "driver": "file",
        "node-name": "f4",
        "filename": "{dir}/sparse.img",
        "cache": {"direct": False, "no-flush": True},
        "detect-zeroes": "on",
        "discard": "unmap",
        "aio": "threads",
        "locking": "off",
    },
    {
        "driver": "raw",
        "node-name": "j6",
        "read-only": True,
        "file": {"driver": "file", "filename": "{dir}/f1.img"},
    },
    {
        "driver": "raw",
        "node-name": "r5",
        "file": {"driver": "raw", "offset": 0, "file": {"driver": "null-aio", "size": 65536}},
    },
]

#: The random two digits of the generated names, for counters 0, 1, 2, ... in that run.
GOLDEN_DIGITS = [87, 96, 78, 92, 91, 58, 28, 52]

#: query-named-block-nodes after GOLDEN_OPS on qemu-storage-daemon 7.2.22, member order
#: as on the wire. Normalized: the folder is "{dir}", and the allocated size of f1.img
#: (file-system dependent) is "{f1-actual}".
GOLDEN_NODES: list[dict[str, Any]] = [
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 65536,
            "filename": 'json:{"driver": "raw", "file": {"offset": 0, "driver": "raw", '
            '"file": {"driver": "null-aio", "size": 65536}}}',
            "format": "raw",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "r5",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"driver": "raw", "file": {"offset": 0, "driver": "raw", "file": '
        '{"driver": "null-aio", "size": 65536}}}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 65536,
            "filename": 'json:{"offset": 0, "driver": "raw", "file": {"driver": '
            '"null-aio", "size": 65536}}',
            "format": "raw",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block752",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"offset": 0, "driver": "raw", "file": {"driver": "null-aio", "size": '
        "65536}}",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 65536,
            "filename": 'json:{"driver": "null-aio", "size": 65536}',
            "format": "null-aio",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block628",
        "backing_file_depth": 0,
        "drv": "null-aio",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"driver": "null-aio", "size": 65536}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "raw",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": True,
        "node-name": "j6",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "file",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": True,
        "node-name": "#block558",
        "backing_file_depth": 0,
        "drv": "file",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "on",
        "image": {
            "virtual-size": 1048576,
            "filename": "{dir}/sparse.img",
            "format": "file",
            "actual-size": 0,
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "f4",
        "backing_file_depth": 0,
        "drv": "file",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": True, "direct": False, "writeback": True},
        "file": "{dir}/sparse.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "raw",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block491",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "file",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block392",
        "backing_file_depth": 0,
        "drv": "file",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "backing-image": {
                "virtual-size": 1000448,
                "filename": "{dir}/f1.img",
                "format": "raw",
                "actual-size": "{f1-actual}",
                "dirty-flag": False,
            },
            "virtual-size": 1000448,
            "filename": 'json:{"image": {"driver": "raw", "file": {"driver": "file", '
            '"filename": "{dir}/f1.img"}}, "driver": "blkdebug", '
            '"inject-error.0.event": "read_aio", "inject-error.0.errno": 5}',
            "format": "blkdebug",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "j2",
        "backing_file_depth": 1,
        "drv": "blkdebug",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"image": {"driver": "raw", "file": {"driver": "file", "filename": '
        '"{dir}/f1.img"}}, "driver": "blkdebug", "inject-error.0.event": "read_aio", '
        '"inject-error.0.errno": 5}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "backing-image": {
                "virtual-size": 1000448,
                "filename": "{dir}/f1.img",
                "format": "file",
                "actual-size": "{f1-actual}",
                "dirty-flag": False,
            },
            "virtual-size": 1000448,
            "filename": 'json:{"set-state.0.event": "write_aio", "image": {"driver": '
            '"file", "filename": "{dir}/f1.img"}, "driver": "blkdebug", '
            '"set-state.0.new_state": 2, "set-state.0.state": 1, "align": '
            "4096}",
            "format": "blkdebug",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "bd3",
        "backing_file_depth": 1,
        "drv": "blkdebug",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"set-state.0.event": "write_aio", "image": {"driver": "file", "filename": '
        '"{dir}/f1.img"}, "driver": "blkdebug", "set-state.0.new_state": 2, '
        '"set-state.0.state": 1, "align": 4096}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1024,
            "filename": 'json:{"offset": 512, "driver": "raw", "size": 1024, "file": '
            '{"driver": "file", "filename": "{dir}/f1.img"}}',
            "format": "raw",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "r4",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"offset": 512, "driver": "raw", "size": 1024, "file": {"driver": "file", '
        '"filename": "{dir}/f1.img"}}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {"virtual-size": 1073741824, "filename": "blkdebug::null-co://", "format": "raw"},
        "iops_wr": 0,
        "ro": False,
        "node-name": "r3",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "blkdebug::null-co://",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1073741824,
            "filename": "null-co://",
            "format": "null-co",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block278",
        "backing_file_depth": 0,
        "drv": "null-co",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "null-co://",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "backing-image": {
                "virtual-size": 1073741824,
                "filename": "null-co://",
                "format": "null-co",
                "actual-size": 0,
            },
            "virtual-size": 1073741824,
            "filename": "blkdebug::null-co://",
            "format": "blkdebug",
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block196",
        "backing_file_depth": 1,
        "drv": "blkdebug",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "blkdebug::null-co://",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "backing-image": {
                "virtual-size": 4096,
                "filename": 'json:{"read-zeroes": true, "driver": "null-co", "size": 4096}',
                "format": "null-co",
                "actual-size": 0,
            },
            "virtual-size": 4096,
            "filename": 'json:{"image": {"read-zeroes": true, "driver": "null-co", "size": '
            '4096}, "driver": "blkdebug", "inject-error.0.event": "write_aio", '
            '"inject-error.0.errno": 28}',
            "format": "blkdebug",
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "d1",
        "backing_file_depth": 1,
        "drv": "blkdebug",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"image": {"read-zeroes": true, "driver": "null-co", "size": 4096}, '
        '"driver": "blkdebug", "inject-error.0.event": "write_aio", '
        '"inject-error.0.errno": 28}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1048576,
            "filename": "{dir}/sparse.img",
            "format": "raw",
            "actual-size": 0,
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "r2",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/sparse.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1048576,
            "filename": "{dir}/sparse.img",
            "format": "file",
            "actual-size": 0,
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "#block087",
        "backing_file_depth": 0,
        "drv": "file",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/sparse.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "raw",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "r1",
        "backing_file_depth": 0,
        "drv": "raw",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1000448,
            "filename": "{dir}/f1.img",
            "format": "file",
            "actual-size": "{f1-actual}",
            "dirty-flag": False,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "f1",
        "backing_file_depth": 0,
        "drv": "file",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "{dir}/f1.img",
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 4096,
            "filename": 'json:{"read-zeroes": true, "driver": "null-co", "size": 4096}',
            "format": "null-co",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "n1",
        "backing_file_depth": 0,
        "drv": "null-co",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": 'json:{"read-zeroes": true, "driver": "null-co", "size": 4096}',
    },
    {
        "iops_rd": 0,
        "detect_zeroes": "off",
        "image": {
            "virtual-size": 1073741824,
            "filename": "null-co://",
            "format": "null-co",
            "actual-size": 0,
        },
        "iops_wr": 0,
        "ro": False,
        "node-name": "n0",
        "backing_file_depth": 0,
        "drv": "null-co",
        "iops": 0,
        "bps_wr": 0,
        "write_threshold": 0,
        "encrypted": False,
        "bps": 0,
        "bps_rd": 0,
        "cache": {"no-flush": False, "direct": False, "writeback": True},
        "file": "null-co://",
    },
]


def _substitute(value: Any, folder: str, f1_actual: int) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, folder, f1_actual) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, folder, f1_actual) for v in value]
    if value == "{f1-actual}":
        return f1_actual
    if isinstance(value, str):
        return value.replace("{dir}", folder)
    return value


def make_images(folder: Path) -> None:
    (folder / "f1.img").write_bytes(os.urandom(1000123))
    with open(folder / "sparse.img", "wb") as f:
        f.truncate(1 << 20)


def expected_golden(folder: Path) -> list[dict[str, Any]]:
    actual = os.stat(folder / "f1.img").st_blocks * 512
    result: list[dict[str, Any]] = _substitute(GOLDEN_NODES, str(folder), actual)
    return result


def golden_ops(folder: Path) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = _substitute(GOLDEN_OPS, str(folder), 0)
    return ops


def digits(values: list[int]) -> Any:
    it = iter(values)
    return lambda: next(it)


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[BlockGraph]:
    g = BlockGraph(rng=lambda: 0)
    yield g
    g.close()


def test_query_named_block_nodes_matches_qemu(tmp_path: Path) -> None:
    make_images(tmp_path)
    g = BlockGraph(rng=digits(GOLDEN_DIGITS))
    try:
        for op in golden_ops(tmp_path):
            g.add(op)
        got = g.query_named_block_nodes()
    finally:
        g.close()
    want = expected_golden(tmp_path)
    assert got == want
    # Same member order as 7.2 too, so even a byte-level comparison holds.
    assert json.dumps(got) == json.dumps(want)


# -- a live differential run (skipped without qemu-storage-daemon) --------------


class _Qmp:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode())
        self.f.flush()
        while True:
            reply: dict[str, Any] = json.loads(self.f.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@contextlib.contextmanager
def live_daemon(folder: Path) -> Iterator[_Qmp]:
    """A qemu-storage-daemon on a socket in ``folder``; --daemonize returns once it listens."""
    path = str(folder / "m.sock")
    pidfile = folder / "qsd.pid"
    subprocess.run(
        [
            "qemu-storage-daemon",
            "--chardev",
            f"socket,id=m,path={path},server=on,wait=off",
            "--monitor",
            "chardev=m",
            "--daemonize",
            "--pidfile",
            str(pidfile),
        ],
        check=True,
        timeout=10,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = int(pidfile.read_text())
    try:
        qmp = _Qmp(path)
        try:
            yield qmp
        finally:
            qmp.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-storage-daemon") is None, reason="no qemu-storage-daemon")
def test_golden_still_matches_live_qemu(tmp_path: Path) -> None:
    """Re-records the golden scenario on a live daemon (random name digits aside)."""
    folder = tmp_path / "d"
    folder.mkdir()
    make_images(folder)
    with live_daemon(tmp_path) as qmp:
        for op in golden_ops(folder):
            assert qmp.cmd("blockdev-add", op) == {"return": {}}
        live = qmp.cmd("query-named-block-nodes")["return"]
    live_digits = {
        int(n["node-name"][6:-2]): int(n["node-name"][-2:])
        for n in live
        if n["node-name"].startswith("#block")
    }
    g = BlockGraph(rng=digits([live_digits[i] for i in range(len(live_digits))]))
    try:
        for op in golden_ops(folder):
            g.add(op)
        assert json.dumps(g.query_named_block_nodes()) == json.dumps(live)
    finally:
        g.close()
    renamed = json.dumps(live)
    for i, d in live_digits.items():
        renamed = renamed.replace(f"#block{i}{d:02d}", f"#block{i}{GOLDEN_DIGITS[i]:02d}")
    assert json.loads(renamed) == expected_golden(folder)


# -- json: filenames whose keys share a QDict bucket -----------------------------

#: A blkdebug node with many rules: "driver" and "set-state.1.new_state" share a
#: bucket, and so do every inject-error.N.event and .errno.
MANY_RULES: dict[str, Any] = {
    "driver": "blkdebug",
    "node-name": "d",
    "align": 4096,
    "max-transfer": 65536,
    "image": {"driver": "null-co", "node-name": "n", "size": 65536, "read-zeroes": True},
    "inject-error": [
        {"event": "read_aio", "errno": 5},
        {"event": "write_aio", "errno": 28, "once": True},
        {"event": "flush_to_disk", "errno": 5, "sector": 7},
        {"event": "read_aio", "iotype": "read", "errno": 22},
    ],
    "set-state": [
        {"event": "read_aio", "state": 1, "new_state": 2},
        {"event": "write_aio", "state": 2, "new_state": 3},
    ],
}
#: Its filename, as 7.2 prints it.
MANY_RULES_FILENAME = (
    'json:{"set-state.1.event": "write_aio", "set-state.0.event": "read_aio", '
    '"inject-error.1.once": true, "image": {"read-zeroes": true, "driver": "null-co", '
    '"size": 65536}, "max-transfer": 65536, "set-state.1.new_state": 3, "driver": "blkdebug", '
    '"set-state.1.state": 2, "inject-error.3.iotype": "read", "set-state.0.new_state": 2, '
    '"inject-error.0.event": "read_aio", "inject-error.0.errno": 5, '
    '"inject-error.1.event": "write_aio", "inject-error.1.errno": 28, '
    '"inject-error.2.event": "flush_to_disk", "inject-error.2.errno": 5, '
    '"inject-error.3.event": "read_aio", "inject-error.3.errno": 22, "set-state.0.state": 1, '
    '"inject-error.2.sector": 7, "align": 4096}'
)


def test_json_filename_orders_keys_sharing_a_bucket_like_qemu(graph: BlockGraph) -> None:
    assert graph.add(MANY_RULES).filename == MANY_RULES_FILENAME


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-storage-daemon") is None, reason="no qemu-storage-daemon")
def test_json_filename_literal_still_matches_live_qemu(tmp_path: Path) -> None:
    with live_daemon(tmp_path) as qmp:
        assert qmp.cmd("blockdev-add", MANY_RULES) == {"return": {}}
        files = {n["node-name"]: n["file"] for n in qmp.cmd("query-named-block-nodes")["return"]}
    assert files["d"] == MANY_RULES_FILENAME


# -- blockdev-add errors, as recorded ----------------------------------------

#: (arguments, error text) recorded from 7.2 with nodes n0 (null-co) and f1 (file on a
#: 1000123-byte f1.img) present; "{dir}" is the image folder.
ADD_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"driver": "null-co"}, "'node-name' must be specified for the root node"),
    ({"driver": "null-co", "node-name": "1abc"}, "Invalid node-name: '1abc'"),
    ({"driver": "null-co", "node-name": "#block004"}, "Invalid node-name: '#block004'"),
    ({"driver": "null-co", "node-name": "b" * 32}, "Node name too long"),
    ({"driver": "null-co", "node-name": "-" * 32}, "Invalid node-name: '" + "-" * 32 + "'"),
    ({"driver": "null-co", "node-name": ""}, "Invalid node-name: ''"),
    ({"driver": "null-co", "node-name": "a b"}, "Invalid node-name: 'a b'"),
    ({"driver": "null-co", "node-name": "n0"}, "Duplicate nodes with node-name='n0'"),
    (
        {"driver": "raw", "node-name": "x1", "file": "nope"},
        "Cannot find device='nope' nor node-name='nope'",
    ),
    ({"driver": "raw", "node-name": "x1", "file": ""}, "Cannot find device='' nor node-name=''"),
    (
        {"driver": "file", "node-name": "x1", "filename": "{dir}/nonexist"},
        "Could not open '{dir}/nonexist': No such file or directory",
    ),
    (
        {"driver": "file", "node-name": "x1", "filename": "{dir}/adir"},
        "Could not open '{dir}/adir': Is a directory",
    ),
    (
        {"driver": "file", "node-name": "x1", "filename": "{dir}/adir", "read-only": True},
        "'file' driver requires '{dir}/adir' to be a regular file",
    ),
    (
        {"driver": "file", "node-name": "x1", "filename": "{dir}/adir/x/y"},
        "Could not open '{dir}/adir/x/y': Not a directory",
    ),
    (
        {"driver": "file", "node-name": "x1", "filename": ""},
        "The 'file' block driver requires a file name",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "offset": 1000000, "size": 1000},
        "The sum of offset (1000000) and size (1000) has to be smaller or equal to the  actual"
        " size of the containing file (1000448)",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "size": 1000449},
        "The sum of offset (0) and size (1000449) has to be smaller or equal to the  actual"
        " size of the containing file (1000448)",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "offset": 1000448, "size": 1},
        "The sum of offset (1000448) and size (1) has to be smaller or equal to the  actual"
        " size of the containing file (1000448)",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "offset": 1000449},
        "Offset (1000449) cannot be greater than size of the containing file (1000448)",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "size": 3},
        "Specified size is not multiple of 512",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "offset": -1},
        "Parameter 'offset' expects a non-negative number below 2^64",
    ),
    (
        {"driver": "raw", "node-name": "x1", "file": "f1", "size": -1},
        "Parameter 'size' expects a non-negative number below 2^64",
    ),
    (
        {
            "driver": "raw",
            "node-name": "x1",
            "file": {"driver": "file", "filename": "{dir}/f1.img", "node-name": "n0"},
        },
        "Duplicate nodes with node-name='n0'",
    ),
    (
        {
            "driver": "raw",
            "node-name": "1bad",
            "file": {"driver": "file", "filename": "{dir}/nonexist"},
        },
        "Could not open '{dir}/nonexist': No such file or directory",
    ),
    (
        {"driver": "raw", "node-name": "n0", "file": "nope"},
        "Cannot find device='nope' nor node-name='nope'",
    ),
    (
        {"driver": "blkdebug", "node-name": "n0", "image": "nope"},
        "Duplicate nodes with node-name='n0'",
    ),
    ({"driver": "blkdebug", "node-name": "1bad", "image": "nope"}, "Invalid node-name: '1bad'"),
    (
        {
            "driver": "blkdebug",
            "node-name": "same",
            "image": {"driver": "null-co", "node-name": "same"},
        },
        "Duplicate nodes with node-name='same'",
    ),
    (
        {"driver": "raw", "node-name": "same", "file": {"driver": "null-co", "node-name": "same"}},
        "Duplicate nodes with node-name='same'",
    ),
    ({"driver": "null-co", "node-name": "x4", "latency-ns": -1}, "latency-ns is invalid"),
    (
        {"driver": "null-co", "node-name": "x4", "size": (1 << 63) - 1},
        "Could not refresh total sector count: File too large",
    ),
    (
        {"driver": "null-co", "node-name": "x4", "detect-zeroes": "unmap"},
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "config": "{dir}/nocfg"},
        "Could not read blkdebug config file: No such file or directory",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "align": 3},
        "Cannot meet constraints with align 3",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "align": 1 << 31},
        "Cannot meet constraints with align 2147483648",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "align": -1},
        "Parameter 'align' expects a non-negative number below 2^64",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "max-transfer": -1},
        "Parameter 'max-transfer' expects a non-negative number below 2^64",
    ),
    (
        {
            "driver": "blkdebug",
            "node-name": "x5",
            "image": "n0",
            "align": 512,
            "max-transfer": 1000,
        },
        "Cannot meet constraints with max-transfer 1000",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "opt-discard": (1 << 31) - 1},
        "Cannot meet constraints with opt-discard 2147483647",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "n0", "max-write-zero": 1 << 31},
        "Parameter 'max-write-zero' expects int32_t",
    ),
    (
        {"driver": "blkdebug", "node-name": "x5", "image": "nope", "align": 3},
        "Cannot find device='nope' nor node-name='nope'",
    ),
    (
        {
            "driver": "raw",
            "node-name": "rr",
            "file": {"driver": "raw", "file": {"driver": "null-co"}, "offset": 5, "size": 7},
        },
        "Specified size is not multiple of 512",
    ),
]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    make_images(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "x").write_text("x")
    return tmp_path


@pytest.fixture
def base_graph(images: Path) -> Iterator[BlockGraph]:
    g = BlockGraph(rng=lambda: 0)
    g.add({"driver": "null-co", "node-name": "n0"})
    g.add({"driver": "file", "node-name": "f1", "filename": str(images / "f1.img")})
    yield g
    g.close()


@pytest.mark.parametrize(("args", "text"), ADD_ERRORS)
def test_blockdev_add_errors(
    base_graph: BlockGraph, images: Path, args: dict[str, Any], text: str
) -> None:
    args = _substitute(args, str(images), 0)
    before = [n.node_name for n in base_graph.nodes()]
    with pytest.raises(QMPError) as info:
        base_graph.add(args)
    assert info.value.desc == text.replace("{dir}", str(images))
    assert info.value.error_class is ErrorClass.GENERIC_ERROR
    # A failed blockdev-add leaves nothing behind, not even implicit children.
    assert [n.node_name for n in base_graph.nodes()] == before
    assert base_graph.get("n0") is not None and base_graph.get("n0").refcnt == 1  # type: ignore[union-attr]


def test_accepted_edge_cases(base_graph: BlockGraph) -> None:
    # All accepted by 7.2.
    base_graph.add({"driver": "null-co", "node-name": "a" * 31})
    base_graph.add({"driver": "null-co", "node-name": "a.b-c_d9"})
    assert base_graph.add({"driver": "raw", "node-name": "x2", "file": "f1", "offset": 3}).size == (
        1000448
    )
    assert (
        base_graph.add({"driver": "raw", "node-name": "x3", "file": "f1", "offset": 1000448}).size
        == 0
    )
    assert base_graph.add({"driver": "null-co", "node-name": "x8", "size": 513}).size == 1024
    base_graph.add({"driver": "blkdebug", "node-name": "x18", "image": "n0", "max-transfer": 3})
    base_graph.add(
        {
            "driver": "blkdebug",
            "node-name": "x11",
            "image": "n0",
            "inject-error": [{"event": "write_aio", "errno": -5, "sector": -5, "state": 0}],
        }
    )
    base_graph.add({"driver": "blkdebug", "node-name": "bd2", "image": "f1", "config": os.devnull})
    assert base_graph.lookup("bd2").filename.startswith(f"blkdebug:{os.devnull}:")


# -- generated names -------------------------------------------------------------


def test_generated_names_count_failed_opens(images: Path) -> None:
    # Live: the counter advances for every unnamed node that was named, even when it (or
    # its parent) then failed; raw names its file child first, blkdebug names itself first.
    g = BlockGraph(rng=digits([11, 22, 33, 44, 55, 66, 77]))
    try:
        with pytest.raises(QMPError):
            g.add(
                {
                    "driver": "raw",
                    "node-name": "a",
                    "file": {"driver": "file", "filename": "/nonexistent"},
                }
            )
        with pytest.raises(QMPError):
            g.add(
                {
                    "driver": "raw",
                    "node-name": "b",
                    "file": {
                        "driver": "raw",
                        "file": {"driver": "null-co"},
                        "offset": 5,
                        "size": 7,
                    },
                }
            )
        g.add(
            {
                "driver": "raw",
                "node-name": "c",
                "file": {"driver": "blkdebug", "image": {"driver": "null-co"}},
            }
        )
        g.add(
            {
                "driver": "raw",
                "node-name": "d",
                "file": {"driver": "raw", "file": {"driver": "null-co"}},
            }
        )
        names = [(n.node_name, n.driver) for n in g.nodes()]
    finally:
        g.close()
    assert names == [
        ("d", "raw"),
        ("#block677", "raw"),
        ("#block566", "null-co"),
        ("c", "raw"),
        ("#block455", "null-co"),
        ("#block344", "blkdebug"),
    ]


# -- blockdev-del ---------------------------------------------------------------

#: (operation, argument, error or None) in order, recorded from 7.2 on top of n0 and f1.
DEL_SCRIPT: list[tuple[str, Any, str | None]] = [
    ("add", {"driver": "raw", "node-name": "x2", "file": "f1", "offset": 3}, None),
    ("add", {"driver": "raw", "node-name": "x3", "file": "f1", "offset": 1000448}, None),
    (
        "add",
        {
            "driver": "raw",
            "node-name": "x7",
            "file": {"driver": "raw", "file": {"driver": "file", "filename": "{dir}/f1.img"}},
        },
        None,
    ),
    (
        "add",
        {
            "driver": "raw",
            "node-name": "x8",
            "file": {"driver": "file", "filename": "{dir}/f1.img", "node-name": "inner"},
        },
        None,
    ),
    ("del", "nope", "Failed to find node with node-name='nope'"),
    ("del", "inner", "Node inner is not owned by the monitor"),
    ("del", "f1", "Block device f1 is in use"),
    ("del", "x2", None),
    ("del", "x3", None),
    ("del", "f1", None),
    ("del", "f1", "Failed to find node with node-name='f1'"),
    ("del", "x7", None),
    ("del", "x8", None),
    ("del", "inner", "Failed to find node with node-name='inner'"),
    ("add", {"driver": "raw", "node-name": "x9", "file": "n0"}, None),
    ("add", {"driver": "raw", "node-name": "x10", "file": "x9"}, None),
    ("del", "x9", "Block device x9 is in use"),
    ("del", "x10", None),
    ("del", "x9", None),
    ("del", "n0", None),
]


def test_blockdev_del_script(base_graph: BlockGraph, images: Path) -> None:
    for op, arg, text in DEL_SCRIPT:
        arg = _substitute(arg, str(images), 0)
        try:
            if op == "add":
                base_graph.add(arg)
            else:
                base_graph.delete(arg)
            got = None
        except QMPError as exc:
            got = exc.desc
        assert got == text, (op, arg)
    assert base_graph.nodes() == []


def test_delete_frees_implicit_children_and_closes_files(
    base_graph: BlockGraph, images: Path
) -> None:
    node = base_graph.add(
        {
            "driver": "raw",
            "node-name": "r",
            "file": {"driver": "file", "filename": str(images / "f1.img")},
        }
    )
    child = node.children["file"]
    base_graph.delete("r")
    assert child.closed and node.closed
    assert [n.node_name for n in base_graph.nodes()] == ["f1", "n0"]


def test_block_job_makes_node_busy(base_graph: BlockGraph) -> None:
    tgt = base_graph.add({"driver": "null-co", "node-name": "tgt"})
    hold = tgt.block_job("backup")
    with pytest.raises(QMPError) as info:
        base_graph.delete("tgt")
    assert info.value.desc == "Node 'tgt' is busy: block device is in use by block job: backup"
    hold.release()
    hold.release()  # idempotent
    base_graph.delete("tgt")


def test_busy_is_checked_before_ownership_and_use(base_graph: BlockGraph) -> None:
    base_graph.add(
        {"driver": "raw", "node-name": "r", "file": {"driver": "null-co", "node-name": "inner"}}
    )
    hold = base_graph.lookup("inner").block_job("mirror")
    with pytest.raises(QMPError) as info:
        base_graph.delete("inner")
    assert info.value.desc == "Node 'inner' is busy: block device is in use by block job: mirror"
    hold.release()
    with pytest.raises(QMPError) as info:
        base_graph.delete("inner")
    assert info.value.desc == "Node inner is not owned by the monitor"


def test_reference_keeps_node_in_use(base_graph: BlockGraph) -> None:
    ref = base_graph.reference(base_graph.lookup("n0"))
    with pytest.raises(QMPError) as info:
        base_graph.delete("n0")
    assert info.value.desc == "Block device n0 is in use"
    ref.release()
    base_graph.delete("n0")


def test_reference_outliving_delete(base_graph: BlockGraph) -> None:
    node = base_graph.add({"driver": "raw", "node-name": "r", "file": "n0"})
    ref = base_graph.reference(node)
    with pytest.raises(QMPError):
        base_graph.delete("r")
    ref.release()
    base_graph.delete("r")
    assert base_graph.lookup("n0").refcnt == 1


def test_lookup_text(graph: BlockGraph) -> None:
    # Live: blockdev-backup device='x' -> this text, GenericError.
    with pytest.raises(QMPError) as info:
        graph.lookup("x")
    assert info.value.desc == "Cannot find device='x' nor node-name='x'"
    assert info.value.error_class is ErrorClass.GENERIC_ERROR


def test_lookup_finds_generated_names(graph: BlockGraph) -> None:
    graph.add({"driver": "raw", "node-name": "r", "file": {"driver": "null-co"}})
    assert graph.lookup("#block000").driver == "null-co"


def test_info_places_format_members_in_qapi_order(
    graph: BlockGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a format with a backing file (qcow2) adds to the info: members a
    driver returns from image_info_members go to their QAPI place, and
    backing-filename also fills BlockDeviceInfo's backing_file."""
    from qmpjobd.block import info

    node = graph.add({"driver": "null-co", "node-name": "n"})
    extra = {"format-specific": {"type": "x"}, "backing-filename": "b.img", "cluster-size": 512}
    monkeypatch.setattr(node, "image_info_members", lambda: extra)
    image = info.image_info(node)
    assert list(image) == [
        "filename",
        "format",
        "actual-size",
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "format-specific",
    ]
    device = info.device_info(node)
    assert device["backing_file"] == "b.img"
    # backing_file and write_threshold share a bucket: inserted in QAPI order,
    # the later one (write_threshold) prints first, as in QEMU.
    keys = list(device)
    assert keys.index("write_threshold") < keys.index("backing_file")
    monkeypatch.setattr(node, "image_info_members", lambda: {"no-such-member": 1})
    with pytest.raises(ValueError):
        info.image_info(node)


def _window_driver(*, early: bool = False) -> type[Any]:
    """A toy filter driver, built only from the driver interface (block/node.py)."""
    from qmpjobd.block.node import BlockNode, Opening

    class WindowNode(BlockNode):
        driver = "x-window"

        @classmethod
        def open(cls, opening: Opening) -> BlockNode:
            opening.name()
            if early:  # a bug: the child is taken after the node is built
                node = cls(opening)
                opening.child("image")
                return node
            opening.child("image")
            return cls(opening)

        def _length(self) -> int:
            return self.children["image"].size

        def filter_or_cow_child(self) -> BlockNode | None:
            return self.children["image"]

    return WindowNode


def test_a_new_driver_is_a_module_and_a_registry_entry(
    graph: BlockGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qmpjobd.block import drivers
    from qmpjobd.block import graph as graph_module

    registry = {**drivers.DRIVERS, "x-window": _window_driver()}
    monkeypatch.setattr(graph_module, "DRIVERS", registry)
    node = graph.add(
        {"driver": "x-window", "node-name": "w", "image": {"driver": "null-co", "size": 1024}}
    )
    assert node.size == 1024 and node.children["image"].parent_count == 1
    [_, top] = graph.query_named_block_nodes()  # named before its child: listed after it
    assert top["drv"] == "x-window" and top["backing_file_depth"] == 1
    assert top["file"] == (
        'json:{"image": {"driver": "null-co", "size": 1024}, "driver": "x-window"}'
    )
    graph.delete("w")
    assert graph.nodes() == []


def test_a_driver_that_builds_its_node_too_early_is_refused(
    graph: BlockGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qmpjobd.block import drivers
    from qmpjobd.block import graph as graph_module

    registry = {**drivers.DRIVERS, "x-window": _window_driver(early=True)}
    monkeypatch.setattr(graph_module, "DRIVERS", registry)
    graph.add({"driver": "null-co", "node-name": "n"})
    with pytest.raises(RuntimeError):
        graph.add({"driver": "x-window", "node-name": "w", "image": "n"})
    assert [n.node_name for n in graph.nodes()] == ["n"]
    assert graph.lookup("n").refcnt == 1
    graph.delete("n")


# -- allow-path -------------------------------------------------------------------


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "in.img").write_bytes(b"\0" * 4096)
    (tmp_path / "out.img").write_bytes(b"\0" * 4096)
    (folder / "escape.img").symlink_to(tmp_path / "out.img")
    (tmp_path / "inside-link.img").symlink_to(folder / "in.img")
    return folder


def test_allow_path(tmp_path: Path, allowed: Path) -> None:
    g = BlockGraph(allow_paths=[allowed])
    try:
        g.add({"driver": "file", "node-name": "a", "filename": str(allowed / "in.img")})
        # A symlink outside pointing inside is fine: the resolved path counts.
        g.add({"driver": "file", "node-name": "b", "filename": str(tmp_path / "inside-link.img")})
        for name, path in (
            ("c", allowed / "escape.img"),
            ("d", tmp_path / "out.img"),
            ("e", allowed / ".." / "out.img"),
        ):
            with pytest.raises(QMPError) as info:
                g.add({"driver": "file", "node-name": name, "filename": str(path)})
            assert info.value.desc == f"Path '{path}' is not under an allowed directory"
        with pytest.raises(QMPError) as info:
            asyncio.run(g.create_file(str(tmp_path / "new.img"), 512))
        assert info.value.desc == f"Path '{tmp_path / 'new.img'}' is not under an allowed directory"
        assert not (tmp_path / "new.img").exists()
    finally:
        g.close()


def test_allow_path_symlinked_root(tmp_path: Path, allowed: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(allowed)
    g = BlockGraph(allow_paths=[link])
    try:
        g.add({"driver": "file", "node-name": "a", "filename": str(allowed / "in.img")})
        with pytest.raises(QMPError):
            g.add({"driver": "file", "node-name": "b", "filename": str(tmp_path / "out.img")})
    finally:
        g.close()
