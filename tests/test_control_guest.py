"""x-qmpjobd-guest-write: a READY mirror copies what a guest wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support.blockjobs import J, JobClient, add_file, sha256, write_random
from .support.control import wait_held

pytestmark = pytest.mark.timeout(20)
SIZE = 1 << 20
CLUSTER = 64 * 1024


async def files(c: JobClient, tmp_path: Path) -> tuple[Path, Path]:
    src, tgt = tmp_path / "s.img", tmp_path / "t.img"
    write_random(src, SIZE)
    tgt.write_bytes(b"\0" * SIZE)
    await add_file(c, "s", src)
    await add_file(c, "t", tgt)
    return src, tgt


def info(length: int, offset: int) -> dict[str, Any]:
    return {"device": "m", "len": length, "offset": offset, "speed": 0, "type": "mirror"}


async def ready(c: JobClient, **extra: Any) -> None:
    await c.ok("blockdev-mirror", device="s", target="t", sync="full", **{"job-id": "m"}, **extra)
    await c.wait_for("BLOCK_JOB_READY", info(SIZE, SIZE))
    c.take()


async def test_a_ready_mirror_copies_what_a_guest_wrote(c: JobClient, tmp_path: Path) -> None:
    src, tgt = await files(c, tmp_path)
    await ready(c)
    # Hold the copy of the dirty data to see it counted first.
    await c.ok("x-qmpjobd-hold", job="m", offset=SIZE)
    assert await c.ok("x-qmpjobd-guest-write", node="s", offset=100_000, length=70_000) == {}
    await wait_held(c, "m")
    # 100000..170000 touches clusters 1 and 2: 128 KiB more to copy.
    [row] = await c.ok("query-block-jobs")
    assert (row["len"], row["offset"], row["status"]) == (SIZE + 2 * CLUSTER, SIZE, "ready")
    assert tgt.read_bytes()[100_000:170_000] != b"\xa5" * 70_000
    await c.ok("x-qmpjobd-release", job="m")
    await c.ok("job-complete", id="m")
    await c.wait_for("J", "null", "m")
    assert c.take() == [
        J("waiting", "m"),
        J("pending", "m"),
        ("BLOCK_JOB_COMPLETED", info(SIZE + 2 * CLUSTER, SIZE + 2 * CLUSTER)),
        J("concluded", "m"),
        J("null", "m"),
    ]
    assert src.read_bytes()[100_000:170_000] == b"\xa5" * 70_000
    assert sha256(tgt) == sha256(src)


async def test_write_blocking_mode_writes_the_target_before_returning(
    c: JobClient, tmp_path: Path
) -> None:
    src, tgt = await files(c, tmp_path)
    await ready(c, **{"copy-mode": "write-blocking"})
    await c.ok("x-qmpjobd-guest-write", node="s", offset=4096, length=512, pattern=0x5A)
    assert tgt.read_bytes()[4096 : 4096 + 512] == b"\x5a" * 512
    [row] = await c.ok("query-block-jobs")
    assert (row["len"], row["offset"]) == (SIZE + 512, SIZE + 512)
    await c.ok("job-complete", id="m")
    await c.wait_for("J", "null", "m")
    assert sha256(tgt) == sha256(src)


async def test_guest_write_errors(c: JobClient, tmp_path: Path) -> None:
    await files(c, tmp_path)
    assert await c.error("x-qmpjobd-guest-write", node="s", offset=SIZE, length=1) == (
        "GenericError",
        f"Guest write [{SIZE}, {SIZE + 1}) is outside node 's' (size {SIZE})",
    )
    assert await c.error("x-qmpjobd-guest-write", node="s", offset=0, length=1, pattern=256) == (
        "GenericError",
        "Parameter 'pattern' expects a value in range [0, 255]",
    )
    await c.ok("x-qmpjobd-fault", node="s", op="write")
    assert await c.error("x-qmpjobd-guest-write", node="s", offset=0, length=1) == (
        "GenericError",
        "Guest write failed: Input/output error",
    )
