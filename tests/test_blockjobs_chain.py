"""Jobs on qcow2 backing chains through the daemon: block-stream, backups
from and onto qcow2, blockdev-create of a chain, checked with QEMU's tools.

Every image a job wrote passes ``qemu-img check``; its content is compared
(``qemu-img compare``) with a flat copy of the chain taken before the job
(``qemu-img convert``), or with a flat model of the writes.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpjobd.app import App

from .support.blockjobs import J, JobClient, done
from .support.qemu_img import check_clean, compare, run

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
        reason="needs qemu-img and qemu-io",
    ),
]

KiB = 1024
MiB = 1024 * KiB
SIZE = 4 * MiB


def flat(image: Path, out: Path) -> Path:
    """A raw copy of what ``image`` reads (its whole chain)."""
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out


def header_backing(image: Path) -> tuple[str | None, str | None]:
    info = json.loads(run("qemu-img", "info", "--output=json", image))
    return info.get("backing-filename"), info.get("backing-filename-format")


def random_chain(tmp: Path, layers: int = 3, seed: int = 5) -> list[Path]:
    """``layers`` qcow2 images by qemu-img, each over the previous, with random
    writes (data, zeros, discards) in every layer; returns them base first."""
    rng = random.Random(seed)
    paths: list[Path] = []
    for i in range(layers):
        path = tmp / f"l{i}.qcow2"
        if paths:
            run(
                "qemu-img", "create", "-f", "qcow2", "-b", paths[-1].name, "-F", "qcow2",
                path, str(SIZE),
            )  # fmt: skip
        else:
            run("qemu-img", "create", "-f", "qcow2", path, str(SIZE))
        ops = []
        for _ in range(12):
            offset = rng.randrange(0, SIZE - 1, 512)
            length = rng.randrange(512, min(SIZE - offset, 300 * KiB) + 1, 512)
            kind = rng.random()
            if kind < 0.2:
                ops += ["-c", f"write -z {offset} {length}"]
            else:
                ops += ["-c", f"write -P {rng.randrange(1, 256)} {offset} {length}"]
        run("qemu-io", *ops, path)
        paths.append(path)
    return paths


async def add_qcow2(c: JobClient, name: str, path: Path, **extra: Any) -> None:
    await c.ok(
        "blockdev-add",
        driver="qcow2",
        file={"driver": "file", "filename": str(path)},
        **{"node-name": name},
        **extra,
    )


async def wait_done(c: JobClient, job: str) -> None:
    await c.wait_for(*J("null", job))
    events = c.take()
    assert events[-5:] == [
        J("waiting", job),
        J("pending", job),
        ("BLOCK_JOB_COMPLETED", done(job, SIZE, "stream")),
        J("concluded", job),
        J("null", job),
    ], events


async def test_stream_to_a_base(c: JobClient, tmp_path: Path) -> None:
    base, mid, top = random_chain(tmp_path)
    reference = flat(top, tmp_path / "before.raw")
    base_only = flat(base, tmp_path / "base.raw")
    await add_qcow2(c, "top", top)
    await c.ok("block-stream", device="top", base=str(base), **{"job-id": "s"})
    await wait_done(c, "s")
    nodes = await c.ok("query-named-block-nodes")
    assert [n["file"] for n in nodes if n["drv"] == "qcow2"] == [str(base), str(top)]
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(top) == (str(base), "qcow2")
    for image in (base, mid, top):
        check_clean(image)
    compare(top, reference)
    compare(base, base_only)  # the base is not written


async def test_stream_the_whole_chain(c: JobClient, tmp_path: Path) -> None:
    top = random_chain(tmp_path, seed=9)[-1]
    reference = flat(top, tmp_path / "before.raw")
    await add_qcow2(c, "top", top)
    await c.ok("block-stream", device="top", **{"job-id": "s"})
    await wait_done(c, "s")
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(top) == (None, None)
    check_clean(top)
    compare(top, reference)


async def test_stream_chain_made_by_blockdev_create(c: JobClient, tmp_path: Path) -> None:
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    for path in (base, top):
        path.touch()
        await c.ok("blockdev-add", driver="file", filename=str(path), **{"node-name": path.stem})
    for job, node, extra in (
        ("c1", "b", {}),
        ("c2", "t", {"backing-file": "b.qcow2", "backing-fmt": "qcow2"}),
    ):
        await c.ok(
            "blockdev-create",
            **{"job-id": job},
            options={"driver": "qcow2", "file": node, "size": SIZE, **extra},
        )
        await c.wait_for(*J("concluded", job))
        assert (await c.ok("query-jobs"))[0].get("error") is None
        await c.ok("job-dismiss", id=job)
    run("qemu-io", "-c", "write -P 7 0 1M", "-c", "write -z 512k 64k", base)
    run("qemu-io", "-c", "write -P 8 900k 200k", top)
    reference = flat(top, tmp_path / "before.raw")
    await add_qcow2(c, "top", top)
    await c.ok("block-stream", device="top", **{"job-id": "s"})
    await wait_done(c, "s")
    await c.ok("blockdev-del", **{"node-name": "top"})
    check_clean(top)
    compare(top, reference)


async def test_backup_of_a_chain_onto_qcow2(c: JobClient, tmp_path: Path) -> None:
    top = random_chain(tmp_path, seed=11)[-1]
    reference = flat(top, tmp_path / "before.raw")
    target = tmp_path / "target.qcow2"
    run("qemu-img", "create", "-f", "qcow2", target, str(SIZE))
    await add_qcow2(c, "top", top)
    await add_qcow2(c, "tgt", target)
    await c.ok("blockdev-backup", device="top", target="tgt", sync="full", **{"job-id": "b"})
    await c.wait_for(*J("null", "b"))
    assert ("BLOCK_JOB_COMPLETED", done("b", SIZE)) in c.take()
    await c.ok("blockdev-del", **{"node-name": "tgt"})
    check_clean(target)
    compare(target, reference)


async def test_intermediate_commit(c: JobClient, tmp_path: Path) -> None:
    base, mid, top = random_chain(tmp_path, seed=13)
    reference = flat(top, tmp_path / "before.raw")
    mid_view = flat(mid, tmp_path / "mid.raw")
    await add_qcow2(c, "top", top)
    await c.ok("block-commit", device="top", top=str(mid), **{"job-id": "c"})
    await c.wait_for(*J("null", "c"))
    assert ("BLOCK_JOB_COMPLETED", done("c", SIZE, "commit")) in c.take()
    nodes = await c.ok("query-named-block-nodes")
    assert [n["file"] for n in nodes if n["drv"] == "qcow2"] == [str(base), str(top)]
    assert [n["ro"] for n in nodes if n["drv"] == "qcow2"] == [True, False]
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(top) == (str(base), "qcow2")
    for image in (base, mid, top):
        check_clean(image)
    compare(top, reference)
    compare(base, mid_view)  # the base now reads as mid did


async def test_active_commit(c: JobClient, tmp_path: Path) -> None:
    base, mid, top = random_chain(tmp_path, seed=17)
    reference = flat(top, tmp_path / "before.raw")
    await add_qcow2(c, "top", top)
    await c.ok("block-commit", device="top", **{"job-id": "a"})
    await c.wait_for(*J("ready", "a"))
    await c.ok("job-complete", id="a")
    await c.wait_for(*J("null", "a"))
    await c.ok("blockdev-del", **{"node-name": "top"})
    for image in (base, mid, top):
        check_clean(image)
    compare(base, reference)  # everything above the base is in the base
    compare(top, reference)


@pytest.mark.parametrize(
    ("command", "sync"),
    [
        ("drive-backup", "full"),
        ("drive-backup", "top"),
        ("drive-mirror", "full"),
        ("drive-mirror", "top"),
    ],
)
async def test_drive_jobs_create_qcow2_targets(
    c: JobClient, tmp_path: Path, command: str, sync: str
) -> None:
    mid, top = random_chain(tmp_path, seed=19)[1:]
    reference = flat(top, tmp_path / "before.raw")
    target = tmp_path / "target.qcow2"
    await add_qcow2(c, "top", top)
    await c.ok(
        command, device="top", target=str(target), format="qcow2", sync=sync, **{"job-id": "j"}
    )
    if command == "drive-mirror":
        await c.wait_for(*J("ready", "j"))
        await c.ok("job-complete", id="j")
    await c.wait_for(*J("null", "j"))
    assert not [e for e in c.take() if e[0] == "BLOCK_JOB_ERROR"]
    await c.ok("blockdev-del", **{"node-name": "top"})
    expected = (str(mid), "qcow2") if sync == "top" else (None, None)
    assert header_backing(target) == expected
    check_clean(target)
    compare(target, reference)


async def test_mirror_sync_top_onto_an_existing_overlay(c: JobClient, tmp_path: Path) -> None:
    """blockdev-mirror sync top onto a qcow2 overlay of the same backing file."""
    top = random_chain(tmp_path, seed=23)[-1]
    reference = flat(top, tmp_path / "before.raw")
    target = tmp_path / "target.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2", target)
    await add_qcow2(c, "top", top)
    await add_qcow2(c, "tgt", target, backing=None)
    await c.ok("blockdev-mirror", device="top", target="tgt", sync="top", **{"job-id": "m"})
    await c.wait_for(*J("ready", "m"))
    await c.ok("job-complete", id="m")
    await c.wait_for(*J("null", "m"))
    await c.ok("blockdev-del", **{"node-name": "tgt"})
    await c.ok("blockdev-del", **{"node-name": "top"})
    check_clean(target)
    compare(target, reference)


async def test_stream_into_a_read_only_backing_layer(c: JobClient, tmp_path: Path) -> None:
    """Streaming into an implicit (read-only) layer reopens it read-write for
    the job and gives it back read-only, as QEMU does."""
    layers = random_chain(tmp_path, layers=4, seed=29)
    reference = flat(layers[2], tmp_path / "before.raw")
    await add_qcow2(c, "top", layers[3])
    nodes = await c.ok("query-named-block-nodes")
    name = {n["file"]: n["node-name"] for n in nodes if n["drv"] == "qcow2"}
    target = name[str(layers[2])]
    await c.ok("block-stream", device=target, **{"base-node": name[str(layers[0])], "job-id": "s"})
    await wait_done(c, "s")
    nodes = await c.ok("query-named-block-nodes")
    ro = {n["node-name"]: n["ro"] for n in nodes}
    assert ro[target] is True
    assert str(layers[1]) not in {n["file"] for n in nodes}
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(layers[2]) == (str(layers[0]), "qcow2")
    check_clean(layers[2])
    compare(layers[2], reference)


# -- a property: any chain, any stream or commit, the top reads the same ------

_op = st.sampled_from(["stream", "commit", "active-commit"])


@st.composite
def _chains(draw: st.DrawFn) -> tuple[int, list[list[tuple[str, int, int, int]]]]:
    depth = draw(st.integers(2, 4))
    layers = []
    for _ in range(depth):
        writes = []
        for _ in range(draw(st.integers(0, 5))):
            offset = draw(st.integers(0, SIZE // 512 - 1)) * 512
            length = draw(st.integers(1, min(SIZE - offset, 400 * KiB) // 512)) * 512
            kind = draw(st.sampled_from(["data", "data", "zero"]))
            writes.append((kind, offset, length, draw(st.integers(1, 255))))
        layers.append(writes)
    return depth, layers


_EXAMPLES = [0]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(chain=_chains(), op=_op, data=st.data())
async def test_property_chain_jobs_keep_what_the_top_reads(
    c: JobClient, tmp_path_factory: pytest.TempPathFactory, chain: Any, op: str, data: Any
) -> None:
    depth, layers = chain
    tmp = tmp_path_factory.mktemp("chain")
    # Names of its own per example: one that fails leaves nothing in the
    # way of the next, so hypothesis reports (and shrinks) the real failure.
    _EXAMPLES[0] += 1
    top_name, job = f"top{_EXAMPLES[0]}", f"p{_EXAMPLES[0]}"
    model = bytearray(SIZE)
    paths: list[Path] = []
    for i, writes in enumerate(layers):  # bottom-up: no COW hides a later write
        path = tmp / f"l{i}.qcow2"
        if paths:
            run(
                "qemu-img", "create", "-f", "qcow2", "-b", paths[-1].name, "-F", "qcow2",
                path, str(SIZE),
            )  # fmt: skip
        else:
            run("qemu-img", "create", "-f", "qcow2", path, str(SIZE))
        cmds: list[str] = []
        for kind, offset, length, pattern in writes:
            if kind == "zero":
                cmds += ["-c", f"write -z {offset} {length}"]
                model[offset : offset + length] = bytes(length)
            else:
                cmds += ["-c", f"write -P {pattern} {offset} {length}"]
                model[offset : offset + length] = bytes([pattern]) * length
        if cmds:
            run("qemu-io", *cmds, path)
        paths.append(path)
    reference = tmp / "model.raw"
    reference.write_bytes(bytes(model))
    await add_qcow2(c, top_name, paths[-1])
    nodes = await c.ok("query-named-block-nodes")
    name = {n["file"]: n["node-name"] for n in nodes if n["drv"] == "qcow2"}
    name[str(paths[-1])] = top_name
    base = data.draw(st.integers(0, depth - 2), label="base")
    if op == "stream":
        await c.ok(
            "block-stream",
            device=top_name,
            **{"base-node": name[str(paths[base])]},
            **{"job-id": job},
        )
    elif op == "commit" and base < depth - 2:
        top = data.draw(st.integers(base + 1, depth - 2), label="top")
        await c.ok(
            "block-commit",
            device=top_name,
            **{"top-node": name[str(paths[top])], "base-node": name[str(paths[base])]},
            **{"job-id": job},
        )
    else:
        await c.ok(
            "block-commit", device=top_name, **{"base-node": name[str(paths[base])], "job-id": job}
        )
        await c.wait_for(*J("ready", job))
        await c.ok("job-complete", id=job)
    await c.wait_for(*J("null", job))
    events = c.take()
    assert not [e for e in events if e[0] in ("BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED")], events
    await c.ok("blockdev-del", **{"node-name": top_name})
    assert await c.ok("query-named-block-nodes") == []
    for path in paths:
        check_clean(path)
    compare(paths[-1], reference)


# -- on-error: QEMU's per-chunk handling, with a failing write injected -------


def _fail_writes(node: Any, errno_: int, times: int) -> None:
    """Make the next ``times`` writes of ``node`` fail with ``errno_``."""
    original = node.write
    left = [times]

    async def write(offset: int, data: bytes) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno_, os.strerror(errno_))
        await original(offset, data)

    node.write = write


async def test_stream_on_error_stop_then_resume(app: App, c: JobClient, tmp_path: Path) -> None:
    top = random_chain(tmp_path, seed=31)[-1]
    reference = flat(top, tmp_path / "before.raw")
    await add_qcow2(c, "top", top)
    _fail_writes(app.graph.lookup("top"), errno.ENOSPC, 1)
    await c.ok("block-stream", device="top", **{"job-id": "s", "on-error": "stop"})
    await c.wait_for(*J("paused", "s"))
    error = {"device": "s", "operation": "read", "action": "stop"}
    assert ("BLOCK_JOB_ERROR", error) in c.take()
    jobs = await c.ok("query-block-jobs")
    assert jobs[0]["io-status"] == "nospace"
    await c.ok("block-job-resume", device="s")
    await c.wait_for(*J("null", "s"))
    await c.ok("blockdev-del", **{"node-name": "top"})
    check_clean(top)
    compare(top, reference)
    assert header_backing(top) == (None, None)


async def test_commit_on_error_ignore_tries_again(app: App, c: JobClient, tmp_path: Path) -> None:
    base, mid, top = random_chain(tmp_path, seed=37)
    reference = flat(top, tmp_path / "before.raw")
    await add_qcow2(c, "top", top)
    nodes = await c.ok("query-named-block-nodes")
    name = {n["file"]: n["node-name"] for n in nodes if n["drv"] == "qcow2"}
    _fail_writes(app.graph.lookup(name[str(base)]), errno.EIO, 1)
    await c.ok(
        "block-commit",
        device="top",
        **{"top-node": name[str(mid)], "job-id": "c", "on-error": "ignore"},
    )
    await c.wait_for(*J("null", "c"))
    events = c.take()
    assert ("BLOCK_JOB_ERROR", {"device": "c", "operation": "write", "action": "ignore"}) in events
    # QEMU's commit tries an ignored chunk again: the job succeeds.
    completed = [e[1] for e in events if e[0] == "BLOCK_JOB_COMPLETED"]
    assert completed == [done("c", SIZE, "commit")]
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(top) == (str(base), "qcow2")
    for image in (base, mid, top):
        check_clean(image)
    compare(top, reference)


async def test_stream_on_error_ignore_fails_at_the_end(
    app: App, c: JobClient, tmp_path: Path
) -> None:
    top = random_chain(tmp_path, seed=41)[-1]
    await add_qcow2(c, "top", top)
    _fail_writes(app.graph.lookup("top"), errno.EIO, 1)
    await c.ok("block-stream", device="top", **{"job-id": "s", "on-error": "ignore"})
    await c.wait_for(*J("null", "s"))
    events = c.take()
    assert ("BLOCK_JOB_ERROR", {"device": "s", "operation": "read", "action": "ignore"}) in events
    completed = [e[1] for e in events if e[0] == "BLOCK_JOB_COMPLETED"]
    assert completed[0]["error"] == "Input/output error"
    await c.ok("blockdev-del", **{"node-name": "top"})
    assert header_backing(top) == ("l1.qcow2", "qcow2")  # the chain is left as it was
    check_clean(top)
