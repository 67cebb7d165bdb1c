"""Block node I/O: real files, sparse files, null-co, raw windows, blkdebug rules, create_file.

The blkdebug expectations are what QEMU 7.2's qemu-io printed for the same rules and
requests (recorded next to each test as comments).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.block import BlockGraph, BlockNode, create_file
from qmpjobd.errors import QMPError

AWKWARD = 1000123  # bytes; QEMU reports 1000448


class RecordingExecutor(ThreadPoolExecutor):
    """A thread pool that remembers which threads ran its work."""

    def __init__(self) -> None:
        super().__init__(2)
        self.threads: set[int] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def run() -> Any:
            self.threads.add(threading.get_ident())
            return fn(*args, **kwargs)

        return super().submit(run)


def write_sparse(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    """Make ``path`` a ``size``-byte sparse file with ``chunks`` written at their offsets."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)


@pytest.fixture
async def graph() -> AsyncIterator[BlockGraph]:
    g = BlockGraph()
    yield g
    g.close()


def add(graph: BlockGraph, **options: Any) -> BlockNode:
    return graph.add({k.replace("_", "-"): v for k, v in options.items()})


async def outcome(coro: Any) -> str:
    """'ok' or the strerror text, like qemu-io's "write failed: ..." lines."""
    try:
        await coro
    except OSError as exc:
        return os.strerror(exc.errno or 0)
    return "ok"


# -- file ------------------------------------------------------------------


async def test_file_read_write_awkward_size(tmp_path: Path) -> None:
    data = os.urandom(AWKWARD)
    path = tmp_path / "a.img"
    path.write_bytes(data)
    executor = RecordingExecutor()
    g = BlockGraph(executor=executor)
    try:
        node = add(g, driver="file", node_name="f", filename=str(path))
        assert node.size == 1000448
        assert node.file_path() == path
        assert await node.read(0, 4096) == data[:4096]
        # The rounded-up tail reads as zeros.
        assert await node.read(999936, 512) == data[999936:] + bytes(1000448 - AWKWARD)
        patch = os.urandom(70001)
        await node.write(123457, patch)
        await node.flush()
        expect = data[:123457] + patch + data[123457 + len(patch) :]
        assert path.read_bytes() == expect
        # Writing the tail grows the file to the rounded length.
        await node.write(1000000, b"\x01" * 448)
        assert path.stat().st_size == 1000448
        assert executor.threads and threading.get_ident() not in executor.threads
    finally:
        g.close()
        executor.shutdown()


async def test_file_out_of_range_and_read_only(graph: BlockGraph, tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    path.write_bytes(bytes(4096))
    node = add(graph, driver="file", node_name="f", filename=str(path), read_only=True)
    assert await outcome(node.read(4096, 1)) == os.strerror(errno.EIO)
    assert await outcome(node.read(-1, 1)) == os.strerror(errno.EINVAL)
    assert await outcome(node.write(0, b"x")) == os.strerror(errno.EPERM)
    assert await node.read(0, 0) == b""


async def test_file_block_status_sparse(graph: BlockGraph, tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    mib = 1 << 20
    write_sparse(path, 8 * mib, {2 * mib: os.urandom(mib), 6 * mib: os.urandom(4096)})
    node = add(graph, driver="file", node_name="s", filename=str(path))
    probe = os.open(path, os.O_RDONLY)
    try:
        os.lseek(probe, 0, os.SEEK_DATA)
        sparse_ok = os.lseek(probe, 0, os.SEEK_HOLE) < 8 * mib
    except OSError:
        sparse_ok = False
    finally:
        os.close(probe)
    if not sparse_ok:
        pytest.skip("file system without holes")
    runs = []
    pos = 0
    while pos < node.size:
        data, n = await node.block_status(pos, node.size - pos)
        runs.append((pos, data, n))
        pos += n
    assert runs[0] == (0, False, 2 * mib)
    assert runs[1][0:2] == (2 * mib, True) and runs[1][2] >= mib
    data_runs = [r for r in runs if r[1]]
    assert sum(n for _, _, n in data_runs) < 3 * mib
    assert runs[-1][1] is False
    # Data where data was written, holes read as zeros.
    assert await node.read(6 * mib, 4096) == path.read_bytes()[6 * mib : 6 * mib + 4096]
    assert await node.read(0, 4096) == bytes(4096)
    # Bounded by the length asked for.
    assert await node.block_status(0, 4096) == (False, 4096)


async def test_file_write_zeroes(graph: BlockGraph, tmp_path: Path) -> None:
    path = tmp_path / "z.img"
    path.write_bytes(b"\xff" * 10000)
    node = add(graph, driver="file", node_name="z", filename=str(path))
    await node.write_zeroes(100, 5000)
    assert path.read_bytes() == b"\xff" * 100 + bytes(5000) + b"\xff" * 4900
    await node.write_zeroes(10000, 240)  # inside the rounded tail
    assert path.stat().st_size == 10240


async def test_file_size_is_read_at_open(graph: BlockGraph, tmp_path: Path) -> None:
    # Live QEMU 7.2 answers 512 for both nodes after the file grew (and
    # keeps the old length after it shrank): the length is read at open.
    path = tmp_path / "g.img"
    path.write_bytes(bytes(512))
    node = add(graph, driver="file", node_name="g", filename=str(path))
    raw = add(graph, driver="raw", node_name="r", file="g")
    write_sparse(path, 1512, {512: bytes(1000)})
    assert (node.size, raw.size) == (512, 512)
    os.truncate(path, 100)
    assert (node.size, raw.size) == (512, 512)
    assert await raw.read(0, 512) == bytes(512)


# -- null-co ---------------------------------------------------------------------


async def test_null_co(graph: BlockGraph) -> None:
    node = add(graph, driver="null-co", node_name="n")
    assert node.size == 1 << 30
    assert node.file_path() is None
    assert await node.read(0, 4096) == bytes(4096)
    await node.write(0, b"abc")
    await node.write_zeroes(0, 1 << 20)
    await node.flush()
    assert await node.block_status(0, 1 << 30) == (None, 1 << 30)
    small = add(graph, driver="null-co", node_name="m", size=513, read_zeroes=True)
    assert small.size == 1024
    assert await small.block_status(0, 1024) == (False, 1024)
    assert await small.read(0, 1024) == bytes(1024)


async def test_null_co_latency(graph: BlockGraph) -> None:
    node = add(graph, driver="null-co", node_name="n", latency_ns=20_000_000)
    task = asyncio.ensure_future(node.read(0, 512))
    await asyncio.sleep(0)
    assert not task.done()  # the delay is on the event loop, not blocking it
    assert await task == bytes(512)


# -- raw --------------------------------------------------------------------------


async def test_raw_window(graph: BlockGraph, tmp_path: Path) -> None:
    data = os.urandom(AWKWARD)
    path = tmp_path / "w.img"
    path.write_bytes(data)
    add(graph, driver="file", node_name="f", filename=str(path))
    whole = add(graph, driver="raw", node_name="whole", file="f")
    assert whole.size == 1000448 and whole.file_path() == path
    win = add(graph, driver="raw", node_name="win", file="f", offset=4096, size=8192)
    assert win.size == 8192 and win.file_path() is None
    assert await win.read(0, 8192) == data[4096 : 4096 + 8192]
    assert await outcome(win.read(8192, 1)) == os.strerror(errno.EIO)
    await win.write(10, b"hello")
    assert path.read_bytes()[4106:4111] == b"hello"
    odd = add(graph, driver="raw", node_name="odd", file="f", offset=3)
    assert odd.size == 1000448  # (1000448 - 3) rounded up again, as in 7.2
    assert await odd.read(0, 16) == data[3:19]
    assert await odd.read(odd.size - 8, 8) == bytes(8)  # beyond the child: zeros


async def test_raw_nested_file_path_and_status(graph: BlockGraph, tmp_path: Path) -> None:
    path = tmp_path / "h.img"
    write_sparse(path, 1 << 20, {})
    node = add(graph, driver="raw", node_name="r", file={"driver": "file", "filename": str(path)})
    assert node.file_path() == path
    assert await node.block_status(0, 1 << 20) == (False, 1 << 20)


# -- blkdebug ------------------------------------------------------------------------


def raw_over_blkdebug(graph: BlockGraph, **blkdebug: Any) -> BlockNode:
    opts = {"driver": "blkdebug", "image": {"driver": "null-co", "read-zeroes": True}}
    opts.update({k.replace("_", "-"): v for k, v in blkdebug.items()})
    return graph.add({"driver": "raw", "node-name": "r", "file": opts})


EIO = os.strerror(errno.EIO)
ENOSPC = os.strerror(errno.ENOSPC)


async def test_blkdebug_write_aio_fails_every_request(graph: BlockGraph) -> None:
    # qemu-io: write failed: EIO; write failed: EIO; read failed: EIO
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio"}])
    got = [
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.read(0, 4096)),
    ]
    assert got == [EIO, EIO, EIO]


async def test_blkdebug_not_armed_before_event(graph: BlockGraph) -> None:
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio"}])
    assert await outcome(node.read(0, 4096)) == "ok"


async def test_blkdebug_once(graph: BlockGraph) -> None:
    # qemu-io: write failed: EIO; wrote; wrote
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio", "once": True}])
    got = [await outcome(node.write(0, bytes(4096))) for _ in range(3)]
    assert got == [EIO, "ok", "ok"]


async def test_blkdebug_sector(graph: BlockGraph) -> None:
    # qemu-io: write 0 4k ok; write 4k 4k EIO; write 3584 1k EIO; read 4k 4k EIO
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio", "sector": 8}])
    got = [
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.write(4096, bytes(4096))),
        await outcome(node.write(3584, bytes(1024))),
        await outcome(node.read(4096, 4096)),
    ]
    assert got == ["ok", EIO, EIO, EIO]


async def test_blkdebug_state_machine(graph: BlockGraph) -> None:
    # qemu-io: read ok; write ok (state 1 -> 2); read ENOSPC (armed in state 2); write ENOSPC
    node = raw_over_blkdebug(
        graph,
        set_state=[{"event": "write_aio", "state": 1, "new_state": 2}],
        inject_error=[{"event": "read_aio", "state": 2, "errno": 28}],
    )
    got = [
        await outcome(node.read(0, 4096)),
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.read(0, 4096)),
        await outcome(node.write(0, bytes(4096))),
    ]
    assert got == ["ok", "ok", ENOSPC, ENOSPC]
    blkdebug = node.children["file"]
    assert blkdebug.rules.state == 2  # type: ignore[attr-defined]


async def test_blkdebug_iotype(graph: BlockGraph) -> None:
    # qemu-io: write ok; read ok (arms); read ok; write EIO
    node = raw_over_blkdebug(graph, inject_error=[{"event": "read_aio", "iotype": "write"}])
    got = [
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.read(0, 4096)),
        await outcome(node.read(0, 4096)),
        await outcome(node.write(0, bytes(4096))),
    ]
    assert got == ["ok", "ok", "ok", EIO]


async def test_blkdebug_default_iotypes(graph: BlockGraph) -> None:
    # qemu-io: write EIO; discard EIO; 'map' (block-status) still works; write -z EIO
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio"}])
    assert await outcome(node.write_zeroes(0, 4096)) == "ok"  # raw fires nothing here
    assert await outcome(node.write(0, bytes(4096))) == EIO
    assert await node.block_status(0, 4096) == (False, 4096)
    assert await outcome(node.write_zeroes(0, 4096)) == EIO
    assert await outcome(node.flush()) == EIO


async def test_blkdebug_block_status_iotype(graph: BlockGraph) -> None:
    # qemu-io: write ok; alloc -> "is_allocated failed: Input/output error"
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio", "iotype": "block-status"}])
    assert await outcome(node.write(0, bytes(4096))) == "ok"
    assert await outcome(node.block_status(0, 4096)) == EIO


async def test_blkdebug_new_event_replaces_active_rules(graph: BlockGraph) -> None:
    # qemu-io: write EIO; read ok (read_aio arms an errno-0 rule instead); write EIO
    node = raw_over_blkdebug(
        graph,
        inject_error=[{"event": "write_aio"}, {"event": "read_aio", "errno": 0}],
    )
    got = [
        await outcome(node.write(0, bytes(4096))),
        await outcome(node.read(0, 4096)),
        await outcome(node.write(0, bytes(4096))),
    ]
    assert got == [EIO, "ok", EIO]


async def test_blkdebug_direct_writes_fire_pwritev_not_write_aio(graph: BlockGraph) -> None:
    # qemu-io on blkdebug itself: event write_aio never fires; event pwritev does.
    quiet = add(
        graph,
        driver="blkdebug",
        node_name="q",
        image={"driver": "null-co"},
        inject_error=[{"event": "write_aio"}],
    )
    assert await outcome(quiet.write(0, bytes(4096))) == "ok"
    loud = add(
        graph,
        driver="blkdebug",
        node_name="l",
        image={"driver": "null-co"},
        inject_error=[{"event": "pwritev"}],
    )
    got = [
        await outcome(loud.read(0, 4096)),
        await outcome(loud.write(0, bytes(4096))),
        await outcome(loud.read(0, 4096)),
    ]
    assert got == ["ok", EIO, EIO]


async def test_blkdebug_immediately_fails_without_yielding(graph: BlockGraph) -> None:
    node = raw_over_blkdebug(graph, inject_error=[{"event": "write_aio", "immediately": True}])
    coro = node.write(0, bytes(512))
    with pytest.raises(OSError) as info:
        coro.send(None)  # completes in the first step: no trip through the loop
    assert info.value.errno == errno.EIO
    later = raw_over_blkdebug_named(graph, "r2", inject_error=[{"event": "write_aio"}])
    coro2 = later.write(0, bytes(512))
    coro2.send(None)  # yields once before failing
    with pytest.raises(OSError):
        coro2.send(None)


def raw_over_blkdebug_named(graph: BlockGraph, name: str, **blkdebug: Any) -> BlockNode:
    opts = {"driver": "blkdebug", "image": {"driver": "null-co"}}
    opts.update({k.replace("_", "-"): v for k, v in blkdebug.items()})
    return graph.add({"driver": "raw", "node-name": name, "file": opts})


async def test_blkdebug_over_file_passes_data(graph: BlockGraph, tmp_path: Path) -> None:
    data = os.urandom(8192)
    path = tmp_path / "d.img"
    path.write_bytes(data)
    node = graph.add(
        {
            "driver": "raw",
            "node-name": "r",
            "file": {
                "driver": "blkdebug",
                "image": {"driver": "file", "filename": str(path)},
                "inject-error": [{"event": "read_aio", "sector": 15, "errno": 28}],
            },
        }
    )
    assert node.file_path() is None  # I/O must go through blkdebug
    assert await node.read(0, 4096) == data[:4096]
    assert await outcome(node.read(4096, 4096)) == ENOSPC


# -- the host file a format layer works on -----------------------------------------


async def test_host_fd_only_where_the_bytes_are_a_host_files(
    graph: BlockGraph, tmp_path: Path
) -> None:
    from qmpjobd.block.qcow2 import FdHostFile

    data = os.urandom(8192)
    path = tmp_path / "h.img"
    path.write_bytes(data)
    f = graph.add({"driver": "file", "node-name": "f", "filename": str(path)})
    fd = f.host_fd()
    assert fd is not None and os.path.samestat(os.fstat(fd), os.stat(path))
    host = FdHostFile(fd)
    assert host.pread(4096, 4096) == await f.read(4096, 4096) == data[4096:]
    host.close()  # not owned: the node's descriptor stays open
    assert await f.read(0, 512) == data[:512]
    for options in (
        {"driver": "raw", "node-name": "r", "file": "f"},
        {"driver": "blkdebug", "node-name": "d", "image": "f"},
        {"driver": "null-co", "node-name": "n"},
    ):
        node = graph.add(options)
        assert node.host_fd() is None, node
        graph.delete(node.node_name)
    graph.delete("f")
    assert f.host_fd() is None


# -- create_file -------------------------------------------------------------------


async def test_create_file(tmp_path: Path) -> None:
    target = tmp_path / "new.img"
    await create_file(str(target), AWKWARD)
    assert target.stat().st_size == AWKWARD
    target.write_bytes(b"x" * 10)
    await create_file(str(target), 4096, "full")
    assert target.read_bytes() == bytes(4096)
    await create_file(str(target), 8192, "falloc")
    assert target.stat().st_size == 8192


@pytest.mark.parametrize(
    ("name", "size", "prealloc", "text"),
    [
        # Recorded from blockdev-create jobs on 7.2.
        ("nodir/x.img", 1000, "off", "Could not create '{p}': No such file or directory"),
        ("c.img", -1, "off", "Could not resize file: Invalid argument"),
        ("c.img", 1000, "metadata", "Unsupported preallocation mode: metadata"),
    ],
)
async def test_create_file_errors(
    tmp_path: Path, name: str, size: int, prealloc: str, text: str
) -> None:
    path = tmp_path / name
    with pytest.raises(QMPError) as info:
        await create_file(str(path), size, prealloc)
    assert info.value.desc == text.replace("{p}", str(path))


async def test_graph_create_file_uses_its_executor(tmp_path: Path) -> None:
    executor = RecordingExecutor()
    g = BlockGraph(allow_paths=[tmp_path], executor=executor)
    try:
        await g.create_file(str(tmp_path / "c.img"), 512)
        node = add(g, driver="file", node_name="c", filename=str(tmp_path / "c.img"))
        assert node.size == 512
        assert executor.threads
    finally:
        g.close()
        executor.shutdown()
