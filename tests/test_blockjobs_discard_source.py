"""Backup's ``discard-source`` and ``x-perf.min-cluster-size`` (QEMU 9.1, in
the 10.0 profile), and the block-copy cluster size a target imposes.

Behaviour as measured on qemu-storage-daemon 10.0 (and 7.2 for the cluster
size of a qcow2 target): a source that has ``discard: unmap`` (itself, or
as the implicit ``file`` of a format node) is discarded as it is copied and
reads zeros afterwards; without it nothing happens; a read-only source is
refused. ``len`` counts whole clusters of max(64 KiB, the target's cluster
size, min-cluster-size).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.app import App, Config

from .support.blockjobs import J, JobClient, add_file, blip, done, sha256, write_random

pytestmark = pytest.mark.timeout(30)

SIZE = 4 << 20
QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed")


async def _client(sock_dir: Path, release: str) -> AsyncIterator[JobClient]:
    daemon = App(Config(sockets=[sock_dir / "qmp.sock"], qemu_version=release))
    await daemon.start()
    try:
        client = await JobClient.connect(sock_dir / "qmp.sock")
        yield client
        await client.close()
    finally:
        await daemon.shutdown()


@pytest.fixture
async def c(sock_dir: Path) -> AsyncIterator[JobClient]:
    async for client in _client(sock_dir, "10.0"):
        yield client


@pytest.fixture
async def c72(sock_dir: Path) -> AsyncIterator[JobClient]:
    async for client in _client(sock_dir, "7.2"):
        yield client


def blocks(path: Path) -> int:
    return os.stat(path).st_blocks


def whole_life(job: str, length: int) -> list[Any]:
    """Every event of a backup that runs alone to its end."""
    return [
        *blip(job),
        J("waiting", job),
        J("pending", job),
        ("BLOCK_JOB_COMPLETED", done(job, length)),
        J("concluded", job),
        J("null", job),
    ]


async def backup(
    c: JobClient,
    job: str,
    device: str,
    target: str,
    *,
    sync: str = "full",
    length: int = SIZE,
    **extra: Any,
) -> None:
    """A backup run to its end, with exactly the events it must send."""
    await c.ok(
        "blockdev-backup", device=device, target=target, sync=sync, **{"job-id": job}, **extra
    )
    await c.wait_for("J", "null", job)
    assert c.take() == whole_life(job, length)


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, str]:
    src, tgt = tmp_path / "src.img", tmp_path / "tgt.img"
    write_random(src, SIZE)
    tgt.write_bytes(b"")
    os.truncate(tgt, SIZE)
    return src, tgt, sha256(src)


async def test_discard_source_on_an_unmap_file_node(
    c: JobClient, images: tuple[Path, Path, str]
) -> None:
    src, tgt, before = images
    assert blocks(src) > 0
    await add_file(c, "s", src, discard="unmap")
    await add_file(c, "t", tgt)
    await backup(c, "j", "s", "t", **{"discard-source": True})
    assert sha256(tgt) == before
    # The copied source is gone: a hole of its whole length, reading zeros.
    assert src.stat().st_size == SIZE
    assert blocks(src) == 0
    assert src.read_bytes() == bytes(SIZE)


async def test_discard_source_without_unmap_keeps_the_source(
    c: JobClient, images: tuple[Path, Path, str]
) -> None:
    src, tgt, before = images
    await add_file(c, "s", src)  # discard defaults to "ignore"
    await add_file(c, "t", tgt)
    await backup(c, "j", "s", "t", **{"discard-source": True})
    assert sha256(tgt) == sha256(src) == before


async def test_discard_source_reaches_the_file_under_a_raw_node(
    c: JobClient, tmp_path: Path
) -> None:
    paths = {}
    for name in ("unmap", "ignore"):
        paths[name] = tmp_path / f"{name}.img"
        write_random(paths[name], SIZE)
        node = {"driver": "file", "filename": str(paths[name])}
        await c.ok(
            "blockdev-add", **{"node-name": name, "driver": "raw", "file": node, "discard": name}
        )
        tgt = tmp_path / f"{name}.tgt"
        tgt.write_bytes(b"")
        os.truncate(tgt, SIZE)
        await add_file(c, f"t-{name}", tgt)
    before = sha256(paths["ignore"])
    # A format node's implicit file child discards whatever the format passes down.
    await backup(c, "j1", "unmap", "t-unmap", **{"discard-source": True})
    assert blocks(paths["unmap"]) == 0
    await backup(c, "j2", "ignore", "t-ignore", **{"discard-source": True})
    assert sha256(paths["ignore"]) == before


async def test_discard_source_refuses_a_read_only_source_after_the_cluster_check(
    c: JobClient, images: tuple[Path, Path, str]
) -> None:
    src, tgt, before = images
    await add_file(c, "s", src, discard="unmap", **{"read-only": True})
    await add_file(c, "t", tgt)
    args = {"device": "s", "target": "t", "sync": "full", "job-id": "j", "discard-source": True}
    assert await c.error("blockdev-backup", **args, **{"x-perf": {"min-cluster-size": 3}}) == (
        "GenericError",
        "Could not create node: Cannot create block-copy-state: "
        "min-cluster-size needs to be a power of 2",
    )
    c.take()
    # The job is created before it fails to take write on its source.
    assert await c.error("blockdev-backup", **args) == ("GenericError", "Block node is read-only")
    assert c.take() == [J("created", "j"), J("null", "j")]
    # Without discard-source a read-only source is fine.
    await backup(c, "j", "s", "t")
    assert sha256(src) == sha256(tgt) == before


@needs_qemu_img
async def test_discard_source_on_qcow2_layers(c: JobClient, tmp_path: Path) -> None:
    assert QEMU_IMG is not None
    base, top, tgt = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "tgt.img"
    qemu_io = shutil.which("qemu-io")
    assert qemu_io is not None
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), str(SIZE)], check=True)
    subprocess.run(
        [qemu_io, "-c", f"write -P 5 0 {SIZE}", str(base)], check=True, capture_output=True
    )
    subprocess.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)],
        check=True,
    )
    subprocess.run([qemu_io, "-c", "write -P 9 0 2M", str(top)], check=True, capture_output=True)
    tgt.write_bytes(b"")
    os.truncate(tgt, SIZE)
    before = blocks(top)
    file = {"driver": "file", "filename": str(top)}
    await c.ok(
        "blockdev-add", **{"node-name": "top", "driver": "qcow2", "file": file, "discard": "unmap"}
    )
    await add_file(c, "t", tgt)
    await backup(c, "j", "top", "t", sync="top", length=2 << 20, **{"discard-source": True})
    assert tgt.read_bytes()[: 2 << 20] == b"\x09" * (2 << 20)
    # top's own clusters were dropped: the chain reads zeros there, not the
    # backing file's bytes (the v3 zero flag).
    await c.ok("blockdev-del", **{"node-name": "top"})
    # top's own 2 MiB of data clusters are holes in its file now (metadata
    # pages may have been written meanwhile).
    assert (before - blocks(top)) * 512 >= (2 << 20) - 65536
    flat = tmp_path / "flat.raw"
    subprocess.run([QEMU_IMG, "convert", "-O", "raw", str(top), str(flat)], check=True)
    assert flat.read_bytes() == bytes(2 << 20) + b"\x05" * (2 << 20)
    for image in (top, base):
        subprocess.run([QEMU_IMG, "check", "-q", str(image)], check=True)


async def test_min_cluster_size_sets_the_copy_granularity(c: JobClient) -> None:
    size = SIZE + 512
    for name in ("s", "t"):
        await c.ok("blockdev-add", **{"node-name": name, "driver": "null-co", "size": size})
    for job, minimum, length in (
        ("a", 1 << 20, 5 << 20),
        ("b", 1024, 65 << 16),
        ("c", 0, 65 << 16),
    ):
        await backup(c, job, "s", "t", length=length, **{"x-perf": {"min-cluster-size": minimum}})


@needs_qemu_img
async def test_a_qcow2_targets_cluster_size_sets_the_granularity(
    c72: JobClient, tmp_path: Path
) -> None:
    assert QEMU_IMG is not None
    size = SIZE + 512
    tgt = tmp_path / "t.qcow2"
    subprocess.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=1M", str(tgt), str(size)],
        check=True,
    )
    await c72.ok("blockdev-add", **{"node-name": "s", "driver": "null-co", "size": size})
    file = {"driver": "file", "filename": str(tgt)}
    await c72.ok("blockdev-add", **{"node-name": "t", "driver": "qcow2", "file": file})
    await c72.ok("blockdev-backup", device="s", target="t", sync="full", speed=1, **{"job-id": "j"})
    [info] = await c72.ok("query-block-jobs")
    assert info["len"] == 5 << 20
    await c72.ok("block-job-set-speed", device="j", speed=0)
    await c72.wait_for("J", "null", "j")
    assert c72.take() == whole_life("j", 5 << 20)
