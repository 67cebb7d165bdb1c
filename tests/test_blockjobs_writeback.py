"""Write-back while copying: the target's written ranges go to the device
during the copy, so the flush that ends a backup is short.

The calls are watched through :attr:`WriteBack.sync_file_range`, and the
target's writes through ``copy_file_range`` (between two files) or
``pwrite`` (a ``blkdebug`` source takes the read/write path); no timing.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.blockjobs import copy as copy_mod
from qmpjobd.blockjobs.copy import MAX_CHUNK, WRITEBACK_START, WRITEBACK_WAIT, WriteBack

from .support.blockjobs import J, JobClient, done, write_random

SIZE = 6 * MAX_CHUNK
WINDOW = 2 * MAX_CHUNK

Log = list[tuple[str, int, int, int]]


@pytest.fixture
async def c(sock: Path) -> Any:
    client = await JobClient.connect(sock)
    try:
        yield client
    finally:
        await client.raw.close()


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Log]:
    """("write", offset, length, 0) for every write to ``tgt.img`` and
    ("sync", offset, length, flags) for every sync_file_range, in order."""
    events: Log = []
    target = tmp_path / "tgt.img"

    def is_target(fd: int) -> bool:
        try:
            return os.path.samefile(f"/proc/self/fd/{fd}", target)
        except OSError:
            return False

    real_cfr = os.copy_file_range
    real_pwrite = os.pwrite

    def cfr(
        src: int, dst: int, count: int, off_src: int | None = None, off_dst: int | None = None
    ) -> int:
        n = real_cfr(src, dst, count, off_src, off_dst)
        if is_target(dst):
            events.append(("write", off_dst or 0, n, 0))
        return n

    def pwrite(fd: int, data: Any, offset: int) -> int:
        n = real_pwrite(fd, data, offset)
        if is_target(fd):
            events.append(("write", offset, n, 0))
        return n

    def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
        assert is_target(fd)
        events.append(("sync", offset, length, flags))

    monkeypatch.setattr(os, "copy_file_range", cfr)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(WriteBack, "sync_file_range", staticmethod(sync_file_range))
    monkeypatch.setattr(copy_mod, "WRITEBACK_WINDOW", WINDOW)
    yield events


async def _backup(c: JobClient, tmp_path: Path, source_kind: str, **args: Any) -> bytes:
    src = tmp_path / "src.img"
    tgt = tmp_path / "tgt.img"
    data = write_random(src, SIZE)
    with tgt.open("wb") as f:
        f.truncate(SIZE)
    image = {"driver": "file", "filename": str(src)}
    if source_kind == "file":
        await c.ok("blockdev-add", **{"node-name": "src"}, **image)
    else:
        await c.ok("blockdev-add", **{"node-name": "src"}, driver="blkdebug", image=image)
    await c.ok("blockdev-add", driver="file", **{"node-name": "tgt"}, filename=str(tgt))
    await c.ok(
        "blockdev-backup", device="src", target="tgt", sync="full", **{"job-id": "b"}, **args
    )
    await c.wait_for(*J("null", "b"))
    return data


def _covered(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of ``(offset, length)`` ranges as sorted ``(start, end)`` runs."""
    runs: list[tuple[int, int]] = []
    for start, end in sorted((o, o + n) for o, n in ranges):
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


@pytest.mark.parametrize("source_kind", ["file", "blkdebug"])
async def test_write_back_starts_during_the_copy_and_is_bounded(
    c: JobClient, tmp_path: Path, log: Log, source_kind: str
) -> None:
    data = await _backup(c, tmp_path, source_kind)
    assert ("BLOCK_JOB_COMPLETED", done("b", SIZE)) in c.take()
    assert (tmp_path / "tgt.img").read_bytes() == data

    writes = [i for i, e in enumerate(log) if e[0] == "write"]
    starts = [i for i, e in enumerate(log) if e[0] == "sync" and e[3] == WRITEBACK_START]
    waits = [i for i, e in enumerate(log) if e[0] == "sync" and e[3] == WRITEBACK_WAIT]
    assert len(starts) + len(waits) + len(writes) == len(log)
    # Every written byte has its write-back started, each range after its write...
    assert _covered([log[i][1:3] for i in starts]) == [(0, SIZE)]
    for i in starts:
        _, offset, length, _ = log[i]
        end = offset + length
        assert _covered([log[w][1:3] for w in writes if w < i and offset <= log[w][1] < end]) == [
            (offset, end)
        ]
    # ...and while the copy goes on: the first range is on its way before
    # the last one is written.
    assert starts[0] < writes[-1]
    # The lag is bounded: ranges more than a window behind are waited for,
    # before the copy writes on, and only ranges already started.
    assert waits and waits[0] < writes[-1]
    for i in waits:
        assert any(log[s][1:3] == log[i][1:3] for s in starts if s < i)
    started = 0
    waited = 0
    for _, _offset, length, flags in log:
        if flags == WRITEBACK_START:
            started += length
        elif flags == WRITEBACK_WAIT:
            waited += length
        else:
            assert started - waited <= WINDOW + MAX_CHUNK


@pytest.mark.parametrize("source_kind", ["file", "blkdebug"])
async def test_a_rate_limited_copy_starts_write_back_but_never_waits(
    c: JobClient, tmp_path: Path, log: Log, source_kind: str
) -> None:
    data = await _backup(c, tmp_path, source_kind, speed=1 << 30)
    assert (tmp_path / "tgt.img").read_bytes() == data
    flags = {e[3] for e in log if e[0] == "sync"}
    assert flags == {WRITEBACK_START}


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, None])
@pytest.mark.parametrize("source_kind", ["file", "blkdebug"])
async def test_without_sync_file_range_the_copy_goes_on_silently(
    c: JobClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source_kind: str,
    err: int | None,
) -> None:
    calls: list[int] = []

    def refused(fd: int, offset: int, length: int, flags: int) -> None:
        calls.append(offset)
        raise OSError(err, os.strerror(err or 0))

    monkeypatch.setattr(
        WriteBack, "sync_file_range", None if err is None else staticmethod(refused)
    )
    data = await _backup(c, tmp_path, source_kind)
    assert ("BLOCK_JOB_COMPLETED", done("b", SIZE)) in c.take()
    assert (tmp_path / "tgt.img").read_bytes() == data
    assert calls == ([] if err is None else [0])  # tried once, then left alone


async def test_a_write_back_error_is_a_write_error(
    c: JobClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int, offset: int, length: int, flags: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(WriteBack, "sync_file_range", staticmethod(failing))
    await _backup(c, tmp_path, "file")
    events = c.take()
    assert (
        "BLOCK_JOB_ERROR",
        {"device": "b", "operation": "write", "action": "report"},
    ) in events
    [completed] = [e for e in events if e[0] == "BLOCK_JOB_COMPLETED"]
    assert completed[1]["error"] == "Input/output error"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_the_real_sync_file_range_is_there_on_linux(tmp_path: Path) -> None:
    call = WriteBack.sync_file_range
    assert call is not None
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        call(fd, 0, 65536, WRITEBACK_START)
        call(fd, 0, 65536, WRITEBACK_WAIT)
        with pytest.raises(OSError) as caught:
            call(fd, 0, 65536, 1 << 10)  # no such flag
        assert caught.value.errno == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.parametrize("speed", [0, 1 << 30])
async def test_an_unthrottled_copy_between_files_reads_the_source_ahead(
    c: JobClient, tmp_path: Path, log: Log, monkeypatch: pytest.MonkeyPatch, speed: int
) -> None:
    source = tmp_path / "src.img"

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        assert os.path.samefile(f"/proc/self/fd/{fd}", source)
        log.append(("ahead", offset, length, 0))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    args = {"speed": speed} if speed else {}
    data = await _backup(c, tmp_path, "file", **args)
    assert (tmp_path / "tgt.img").read_bytes() == data
    aheads = [i for i, e in enumerate(log) if e[0] == "ahead"]
    if speed:
        assert aheads == []  # a rate-limited copy reads as it goes
        return
    writes = [i for i, e in enumerate(log) if e[0] == "write"]
    # Each range is asked for once, before it is copied.
    asked = [log[i][1:3] for i in aheads]
    assert _covered(asked) == [(MAX_CHUNK, MAX_CHUNK + sum(n for _, n in asked))]
    assert sum(n for _, n in asked) >= SIZE - MAX_CHUNK
    for w in writes:
        offset = log[w][1]
        if offset >= MAX_CHUNK:
            assert any(o <= offset < o + n for i in aheads if i < w for o, n in [log[i][1:3]])
