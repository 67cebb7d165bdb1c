"""The ``qcow2`` block driver over backing chains, against QEMU's own tools.

Chains are built by ``qemu-img create -b ... -F qcow2`` and ``qemu-io``, and
by qmpjobd's format layer; every image qmpjobd writes passes ``qemu-img
check`` and reads back, through QEMU, like a flat model of the writes
(``qemu-img compare``).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.block import BlockGraph, BlockNode
from qmpjobd.block.drivers.qcow2 import Qcow2CreateOptions, create_on
from qmpjobd.block.qcow2 import create_path
from qmpjobd.errors import QMPError

from .support.qemu_img import check_clean, compare, run

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="needs qemu-img and qemu-io",
)

KiB = 1024
MiB = 1024 * KiB
SIZE = MiB


def write_model(model: bytearray, offset: int, data: bytes) -> None:
    model[offset : offset + len(data)] = data


def qemu_chain(tmp: Path) -> bytearray:
    """base <- mid <- top by qemu-img; returns the flat model of top."""
    model = bytearray(SIZE)
    run("qemu-img", "create", "-f", "qcow2", tmp / "base.qcow2", str(SIZE))
    run("qemu-io", "-c", "write -P 1 0 64k", "-c", "write -P 4 960k 64k", tmp / "base.qcow2")
    write_model(model, 0, b"\x01" * 64 * KiB)
    write_model(model, 960 * KiB, b"\x04" * 64 * KiB)
    for name, backing in (("mid", "base"), ("top", "mid")):
        run(
            "qemu-img", "create", "-f", "qcow2", "-b", f"{backing}.qcow2", "-F", "qcow2",
            tmp / f"{name}.qcow2",
        )  # fmt: skip
    run("qemu-io", "-c", "write -P 2 64k 64k", "-c", "write -z 960k 32k", tmp / "mid.qcow2")
    write_model(model, 64 * KiB, b"\x02" * 64 * KiB)
    write_model(model, 960 * KiB, bytes(32 * KiB))
    run("qemu-io", "-c", "write -P 3 100k 60k", tmp / "top.qcow2")
    write_model(model, 100 * KiB, b"\x03" * 60 * KiB)
    return model


def qemu_map(path: Path) -> list[bool]:
    """Per 512-byte sector, whether ``qemu-img map`` says it holds data."""
    sectors = [False] * (SIZE // 512)
    for extent in json.loads(run("qemu-img", "map", "--output=json", path)):
        for s in range(extent["start"] // 512, (extent["start"] + extent["length"]) // 512):
            sectors[s] = extent["data"]
    return sectors


async def status_map(node: BlockNode) -> list[bool]:
    sectors = [False] * (SIZE // 512)
    pos = 0
    while pos < SIZE:
        data, n = await node.block_status(pos, SIZE - pos)
        for s in range(pos // 512, (pos + n) // 512):
            sectors[s] = data is True
        pos += n
    return sectors


@pytest.fixture
async def graph() -> AsyncIterator[BlockGraph]:
    g = BlockGraph()
    yield g
    g.close()


def qcow2(graph: BlockGraph, name: str, path: Path, **extra: Any) -> BlockNode:
    options = {
        "driver": "qcow2",
        "node-name": name,
        "file": {"driver": "file", "filename": str(path)},
    }
    return graph.add({**options, **extra})


async def test_reads_fall_through_the_chain(graph: BlockGraph, tmp_path: Path) -> None:
    model = qemu_chain(tmp_path)
    top = qcow2(graph, "top", tmp_path / "top.qcow2")
    assert top.size == SIZE
    assert await top.read(0, SIZE) == bytes(model)
    assert await top.read(99 * KiB, 3 * KiB) == bytes(model[99 * KiB : 102 * KiB])
    # block status sees the chain as QEMU does (qemu-img map's data flag)
    assert await status_map(top) == qemu_map(tmp_path / "top.qcow2")
    assert await top.block_status(0, SIZE) == (True, 64 * KiB)
    assert await top.block_status(64 * KiB, SIZE - 64 * KiB) == (True, 128 * KiB)
    names = [n.node_name for n in graph.nodes()]
    assert len(names) == 6 and names[2].startswith("#block2")  # mid by the counter
    backing = graph.get(names[2])
    assert backing is not None and backing.read_only
    with pytest.raises(OSError):
        await backing.write(0, bytes(512))


async def test_writes_into_the_top_layer(graph: BlockGraph, tmp_path: Path) -> None:
    model = qemu_chain(tmp_path)
    top = qcow2(graph, "top", tmp_path / "top.qcow2")
    rng = random.Random(7)
    for _ in range(60):
        offset = rng.randrange(SIZE - 1)
        length = rng.randrange(1, min(SIZE - offset, 150 * KiB) + 1)
        if rng.random() < 0.25:
            await top.write_zeroes(offset, length)
            write_model(model, offset, bytes(length))
        else:
            data = bytes([rng.randrange(1, 256)]) * length
            await top.write(offset, data)
            write_model(model, offset, data)
    assert await top.read(0, SIZE) == bytes(model)
    await top.flush()
    graph.delete("top")
    reference = tmp_path / "model.raw"
    reference.write_bytes(bytes(model))
    for layer in ("top", "mid", "base"):
        check_clean(tmp_path / f"{layer}.qcow2")
    compare(tmp_path / "top.qcow2", reference)


async def test_chain_made_by_qmpjobd(graph: BlockGraph, tmp_path: Path) -> None:
    create_path(tmp_path / "b.qcow2", SIZE)
    create_path(tmp_path / "t.qcow2", SIZE, backing_file="b.qcow2", backing_format="qcow2")
    base = qcow2(graph, "b", tmp_path / "b.qcow2")
    await base.write(0, b"\x05" * 100 * KiB)
    graph.delete("b")
    top = qcow2(graph, "t", tmp_path / "t.qcow2")
    await top.write(50 * KiB, b"\x06" * 10 * KiB)
    graph.delete("t")
    model = bytearray(SIZE)
    write_model(model, 0, b"\x05" * 100 * KiB)
    write_model(model, 50 * KiB, b"\x06" * 10 * KiB)
    reference = tmp_path / "model.raw"
    reference.write_bytes(bytes(model))
    check_clean(tmp_path / "b.qcow2")
    check_clean(tmp_path / "t.qcow2")
    compare(tmp_path / "t.qcow2", reference)
    # QEMU reads the top layer's own cluster as written (copy-on-write from base)
    out = run("qemu-io", "-c", "read -P 5 0 50k", "-c", "read -P 6 50k 10k", tmp_path / "t.qcow2")
    assert "read 51200/51200" in out and "read 10240/10240" in out


async def test_backing_rules(graph: BlockGraph, tmp_path: Path) -> None:
    qemu_chain(tmp_path)
    mid = qcow2(graph, "mid", tmp_path / "mid.qcow2", backing=None)
    assert await mid.read(0, 4) == bytes(4)  # base not opened: zeros below mid
    top = qcow2(graph, "top", tmp_path / "top.qcow2", backing="mid")
    with pytest.raises(QMPError) as info:
        graph.delete("mid")
    assert info.value.desc == "Node 'mid' is busy: node is used as backing hd of 'top'"
    assert mid.busy_reason_for("backup-source") is None
    assert mid.busy_reason_for("mirror-source") == "node is used as backing hd of 'top'"
    assert await top.read(64 * KiB, 1) == b"\x02"
    graph.delete("top")
    graph.delete("mid")
    assert list(graph.nodes()) == []
    with pytest.raises(QMPError) as info:
        qcow2(graph, "x", tmp_path / "top.qcow2", backing="nope")
    assert (
        info.value.desc
        == "Could not open backing file: Cannot find device='nope' nor node-name='nope'"
    )
    assert list(graph.nodes()) == []


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"version": 2},
        {"cluster_size": 4096, "refcount_bits": 64, "lazy_refcounts": True},
        {"backing_file": "base.qcow2", "backing_fmt": "qcow2"},
        {"preallocation": "metadata"},
        {"preallocation": "full"},
    ],
)
async def test_create_on_a_file_node(
    graph: BlockGraph, tmp_path: Path, options: dict[str, Any]
) -> None:
    """blockdev-create's qcow2 images: clean, QEMU's layout, usable by QEMU."""
    run("qemu-img", "create", "-f", "qcow2", tmp_path / "base.qcow2", "3M")
    run("qemu-io", "-c", "write -P 9 0 3M", tmp_path / "base.qcow2")
    path = tmp_path / "new.qcow2"
    path.touch()
    node = graph.add({"driver": "file", "node-name": "f", "filename": str(path)})
    await create_on(node, Qcow2CreateOptions(size=3 * MiB, **options))
    assert node.size == path.stat().st_size
    check_clean(path)
    ours = json.loads(run("qemu-img", "info", "--output=json", path))
    args = ["-o", f"cluster_size={options.get('cluster_size', 65536)}"]
    args += ["-o", f"compat={'0.10' if options.get('version') == 2 else '1.1'}"]
    if "refcount_bits" in options:
        args += ["-o", f"refcount_bits={options['refcount_bits']},lazy_refcounts=on"]
    if "backing_file" in options:
        args += ["-b", "base.qcow2", "-F", "qcow2"]
    if "preallocation" in options:
        args += ["-o", f"preallocation={options['preallocation']}"]
    reference = tmp_path / "ref.qcow2"
    run("qemu-img", "create", "-f", "qcow2", *args, reference, str(3 * MiB))
    theirs = json.loads(run("qemu-img", "info", "--output=json", reference))
    for key in ("actual-size", "filename", "children"):
        ours.pop(key, None)
        theirs.pop(key, None)
    assert ours == theirs
    # (the file's layout is blockdev-create's, checked by the differential
    # scenario chain_create_qcow2; qemu-img create's differs slightly)
    run("qemu-io", "-c", "write -P 7 1M 64k", path)
    run("qemu-io", "-c", "write -P 7 1M 64k", reference)
    check_clean(path)
    compare(path, reference)


async def test_create_refuses_as_qemu(graph: BlockGraph, tmp_path: Path) -> None:
    path = tmp_path / "new.qcow2"
    path.touch()
    node = graph.add({"driver": "file", "node-name": "f", "filename": str(path), "read-only": True})
    with pytest.raises(QMPError) as info:
        await create_on(node, Qcow2CreateOptions(size=MiB))
    assert info.value.desc == "Block node is read-only"
    with pytest.raises(QMPError) as info:
        await create_on(node, Qcow2CreateOptions(size=MiB, version=2, refcount_bits=8))
    assert info.value.desc == (
        "Different refcount widths than 16 bits require compatibility level 1.1 or "
        "above (use version=v3 or greater)"
    )


async def test_discard_no_unref_needs_version_3(graph: BlockGraph, tmp_path: Path) -> None:
    # 10.0's option (its schema alone offers it); the check is QEMU 10.0.2's.
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", tmp_path / "v2.qcow2", "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", tmp_path / "v3.qcow2", "1M")
    with pytest.raises(QMPError) as info:
        qcow2(graph, "v2", tmp_path / "v2.qcow2", **{"discard-no-unref": True})
    assert info.value.desc == "discard-no-unref is only supported since qcow2 version 3"
    assert list(graph.nodes()) == []
    qcow2(graph, "v2", tmp_path / "v2.qcow2", **{"discard-no-unref": False})
    qcow2(graph, "v3", tmp_path / "v3.qcow2", **{"discard-no-unref": True})
