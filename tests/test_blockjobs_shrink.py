"""A source file that shrinks while a backup copies it.

QEMU reads a file node's length once, at open; what lies past the file's
real end afterwards reads as zeros, and the backup completes. Both copy
paths must do that: ``copy_file_range`` between two files, and plain reads
and writes (a ``blkdebug`` target takes that path).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import JobClient

SIZE = 8 << 20
CUT = (1 << 20) + 12345


def _target_options(kind: str, path: Path) -> dict[str, Any]:
    file = {"driver": "file", "filename": str(path)}
    if kind == "file":
        return {"node-name": "tgt", **file}
    return {"node-name": "tgt", "driver": "blkdebug", "image": file}


@pytest.mark.parametrize("target_kind", ["file", "blkdebug"])
async def test_backup_of_a_shrinking_source_reads_zeros_past_its_end(
    sock: Path, tmp_path: Path, target_kind: str
) -> None:
    src = tmp_path / "src.img"
    tgt = tmp_path / "tgt.img"
    original = os.urandom(SIZE)
    src.write_bytes(original)
    with tgt.open("wb") as f:
        f.truncate(SIZE)
    c = await JobClient.connect(sock)
    try:
        await c.ok("blockdev-add", driver="file", **{"node-name": "src"}, filename=str(src))
        await c.ok("blockdev-add", **_target_options(target_kind, tgt))
        # One byte a second: the first chunk is copied, then the job sleeps.
        await c.ok(
            "blockdev-backup", device="src", target="tgt", sync="full", speed=1, **{"job-id": "b"}
        )
        for _ in range(500):
            [job] = await c.ok("query-block-jobs")
            if job["offset"]:
                break
            await asyncio.sleep(0.01)
        assert 0 < job["offset"] < CUT
        os.truncate(src, CUT)
        await c.ok("block-job-set-speed", device="b", speed=0)
        await c.wait_for("J", "null", "b")
        completed = [e for e in c.events if e[0].startswith("BLOCK_JOB_")]
        assert completed == [
            (
                "BLOCK_JOB_COMPLETED",
                {"device": "b", "len": SIZE, "offset": SIZE, "speed": 0, "type": "backup"},
            ),
        ]
        nodes = await c.ok("query-named-block-nodes")
        sizes = {n["node-name"]: n["image"]["virtual-size"] for n in nodes}
        assert sizes["src"] == SIZE  # the length read at open, as in QEMU
        data = tgt.read_bytes()
        assert len(data) == SIZE
        assert data[:CUT] == original[:CUT]
        assert data[CUT:] == bytes(SIZE - CUT)
    finally:
        await c.raw.close()
