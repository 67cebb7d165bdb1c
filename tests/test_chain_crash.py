"""SIGKILL during jobs on qcow2 backing chains, then QEMU's tools on every image.

Every trial builds a three-layer chain (base <- mid <- top) with data in
each layer written by ``qemu-io``; the layers are made by ``qemu-img create``
or by the daemon's own ``blockdev-create``, some with lazy refcounts. A
daemon child process then runs one rate-limited job on it:

* ``block-stream`` into top (onto base, or of the whole chain);
* ``block-commit``: intermediate (mid into base) or active (top into base,
  through READY and ``job-complete``);
* ``blockdev-backup`` onto a qcow2 target, or ``drive-backup`` onto a qcow2
  target the daemon creates (``format: qcow2``, ``mode: absolute-paths``,
  ``sync`` full or top);

and is killed with SIGKILL at a random moment: while the job runs, before
the command's reply, or during the graph change at completion (right after
``job-finalize`` of a job left pending by ``auto-finalize: false``, or right
after ``job-complete`` of an active commit).

Afterwards every qcow2 image of the trial passes ``qemu-img check``: exit 0,
or 3 (leaked clusters only, which QEMU allows after a crash); a report of
corruption fails. An image made with lazy refcounts may be left with its
dirty bit set and its refcounts behind (that is what lazy refcounts defer):
it must then pass ``qemu-img check -r all``, and a plain check after that.
No other image may be left dirty.

And the data: what the top's chain reads never changes through a stream,
a commit or a backup, killed or not (``qemu-img compare`` with the flat
reference of the writes); layers a job does not write read as before; an
image a job writes (the base of a commit, a backup target) reads, page by
page, either as before or as its source (a killed write may end between
pages, never inside one), and once the client saw BLOCK_JOB_COMPLETED it
reads as its source entirely, with the header naming the new backing file.

The quick variant (a few kills of each kind) runs by default; the slow one
(CHAIN_CRASH_KILLS, default 120) is marked ``slow``:
``pytest -m slow tests/test_chain_crash.py``; CHAIN_CRASH_SEED picks its seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.block.qcow2 import FdHostFile, Qcow2Image, create_path

from .support.ledger import Client, Daemon
from .support.qemu_img import run

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="needs qemu-img and qemu-io",
)

KiB = 1024
MiB = 1024 * KiB
SIZE = 4 * MiB
PAGE = 4096  # a killed pwrite stops between pages of the page cache
KINDS = ("stream", "commit", "backup")
MAGIC = b"QFI\xfb"
INCOMPAT_DIRTY = 1


def header_backing(image: Path) -> str | None:
    info = json.loads(run("qemu-img", "info", "--output=json", image))
    name: str | None = info.get("backing-filename")
    return name


def is_dirty(image: Path) -> bool:
    """The header's dirty bit (a version 3 header's incompatible features)."""
    with open(image, "rb") as f:
        head = f.read(80)
    if int.from_bytes(head[4:8], "big") < 3:
        return False
    return int.from_bytes(head[72:80], "big") & INCOMPAT_DIRTY != 0


def flat(image: Path) -> bytes:
    """What ``image`` reads through its whole chain."""
    out = image.with_suffix(".flat")
    run("qemu-img", "convert", "-O", "raw", image, out)
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def same(image: Path, reference: Path) -> None:
    """``image`` (its chain) reads exactly as the raw file ``reference``."""
    result = subprocess.run(
        ["qemu-img", "compare", "-F", "raw", str(image), str(reference)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{image} != {reference.name}: {result.stdout}{result.stderr}"


def pages_either(image: Path, before: bytes, after: bytes, fmt: Format) -> None:
    """Every page of ``image`` reads as it did ``before`` or as ``after``.

    A page of the page cache, or a cluster where clusters are smaller: a
    cluster's data is written before the L2 entry that points to it, and a
    killed write of data in place ends between pages.
    """
    data = flat(image)
    assert len(data) == len(before) == len(after)
    step = min(PAGE, fmt.cluster_size)
    bad = [
        off
        for off in range(0, len(data), step)
        if data[off : off + step] not in (before[off : off + step], after[off : off + step])
    ]
    assert not bad, f"{image.name}: pages neither old nor new at {[hex(b) for b in bad[:8]]}"


@dataclass
class Stats:
    kills: int = 0
    images: int = 0
    checks: int = 0
    leaks: int = 0
    leaky_images: int = 0
    #: lazy-refcount images left dirty by the kill, consistent after ``-r all``
    repaired: int = 0
    #: jobs the client saw complete before the kill
    completed: int = 0
    #: kills right after job-finalize or job-complete
    at_completion: int = 0
    #: kills before the reply to the job's command
    before_reply: int = 0
    #: drive-backup targets whose creation the kill cut short (not an image yet)
    unborn: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return (
            f"{self.kills} kills ({dict(self.kinds)}; {self.at_completion} at completion, "
            f"{self.before_reply} before the reply, {self.completed} after completing), "
            f"{self.images} images checked ({self.checks} qemu-img checks), "
            f"{self.leaks} leaked clusters in {self.leaky_images} images, "
            f"{self.repaired} dirty lazy-refcount images repaired, "
            f"{self.unborn} unborn drive-backup targets"
        )


def check_image(path: Path, lazy: bool, stats: Stats) -> None:
    """``qemu-img check``: no corruption; leaks allowed; a dirty image must
    have lazy refcounts and be consistent after ``-r all``."""
    stats.images += 1
    dirty = is_dirty(path)
    assert lazy or not dirty, f"{path.name}: dirty bit without lazy refcounts"
    result = subprocess.run(
        ["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True
    )
    stats.checks += 1
    if dirty:
        # Lazy refcounts: the refcounts may be behind the L2 tables; QEMU
        # repairs them on the next read-write open, as check -r all does.
        repair = subprocess.run(
            ["qemu-img", "check", "-r", "all", "--output=json", str(path)],
            capture_output=True,
            text=True,
        )
        stats.checks += 1
        assert repair.returncode == 0, f"{path.name} (lazy, dirty) after -r all: {repair.stdout}"
        stats.repaired += 1
        result = subprocess.run(
            ["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True
        )
        stats.checks += 1
        assert result.returncode == 0, f"{path.name} after repair: {result.stdout}"
        assert not is_dirty(path)
        return
    assert result.returncode in (0, 3), f"{path.name}: {result.returncode} {result.stdout}"
    report = json.loads(result.stdout)
    assert report.get("corruptions", 0) == 0, (path.name, report)
    assert report.get("check-errors", 0) == 0, (path.name, report)
    leaks = report.get("leaks", 0)
    if leaks:
        stats.leaks += leaks
        stats.leaky_images += 1


# -- the chain ------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """How a qcow2 image is made."""

    version: int = 3
    cluster_size: int = 65536
    lazy: bool = False
    refcount_bits: int = 16

    @classmethod
    def draw(cls, rng: random.Random) -> Format:
        version = 2 if rng.random() < 0.15 else 3
        # Small clusters: many L2 tables and refcount blocks allocated while
        # the job runs; with wide refcounts (a 512-byte refcount table has
        # room for 64 blocks of 64 refcounts) the refcount table must move.
        cluster_size = rng.choices([65536, 4096, 512], weights=[6, 2, 2])[0]
        bits = 16 if version == 2 else rng.choices([16, 64, 1], weights=[6, 2, 1])[0]
        return cls(version, cluster_size, version == 3 and rng.random() < 0.35, bits)

    def brief(self) -> str:
        lazy = "L" if self.lazy else ""
        bits = "" if self.refcount_bits == 16 else f"r{self.refcount_bits}"
        return f"v{self.version}/{self.cluster_size // 1024 or 0.5}k{lazy}{bits}"


@dataclass
class Chain:
    paths: list[Path]  # base, mid, top
    #: what each layer's chain reads, as raw files (base's alone, mid over base, ...)
    refs: list[Path]
    views: list[bytes]
    formats: dict[Path, Format]
    #: the 64 KiB chunks each layer holds
    chunks: list[set[int]]
    how: str


def random_writes(rng: random.Random, path: Path, view: bytearray) -> set[int]:
    """Random writes (data and zeros) into ``path`` and ``view``; the 64 KiB
    chunks they touch."""
    chunks: set[int] = set()
    cmds: list[str] = []
    for _ in range(rng.randrange(6, 12)):
        offset = rng.randrange(0, SIZE - 1, 512)
        length = rng.randrange(512, min(SIZE - offset, 384 * KiB) + 1, 512)
        if rng.random() < 0.2:
            cmds += ["-c", f"write -z {offset} {length}"]
            view[offset : offset + length] = bytes(length)
        else:
            pattern = rng.randrange(1, 256)
            cmds += ["-c", f"write -P {pattern} {offset} {length}"]
            view[offset : offset + length] = bytes([pattern]) * length
        chunks.update(range(offset >> 16, ((offset + length - 1) >> 16) + 1))
    run("qemu-io", *cmds, path)
    return chunks


def blockdev_create(
    c: Client, path: Path, tag: str, fmt: Format, backing: str | None = None
) -> None:
    """A qcow2 image made by the daemon's blockdev-create."""
    path.touch()
    c.ok("blockdev-add", driver="file", filename=str(path), **{"node-name": f"f-{tag}"})
    options: dict[str, Any] = {
        "driver": "qcow2",
        "file": f"f-{tag}",
        "size": SIZE,
        "version": f"v{fmt.version}",
        "cluster-size": fmt.cluster_size,
        "refcount-bits": fmt.refcount_bits,
    }
    if fmt.lazy:
        options["lazy-refcounts"] = True
    if backing is not None:
        options.update({"backing-file": backing, "backing-fmt": "qcow2"})
    start = len(c.events)
    c.ok("blockdev-create", **{"job-id": f"c-{tag}"}, options=options)
    c.wait_for("JOB_STATUS_CHANGE", start, id=f"c-{tag}", status="concluded")
    (job,) = c.ok("query-jobs")
    assert job.get("error") is None, job
    c.ok("job-dismiss", id=f"c-{tag}")
    c.ok("blockdev-del", **{"node-name": f"f-{tag}"})


def qemu_img_create(path: Path, fmt: Format, backing: str | None = None) -> None:
    opts = f"compat={'1.1' if fmt.version == 3 else '0.10'},cluster_size={fmt.cluster_size}"
    opts += f",refcount_bits={fmt.refcount_bits}"
    if fmt.lazy:
        opts += ",lazy_refcounts=on"
    back = ["-b", backing, "-F", "qcow2"] if backing is not None else []
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, *back, path, str(SIZE))


def build_chain(tmp: Path, rng: random.Random, c: Client) -> Chain:
    how = rng.choice(["qemu-img", "blockdev-create", "mixed"])
    paths = [tmp / f"{name}.qcow2" for name in ("base", "mid", "top")]
    formats: dict[Path, Format] = {}
    views: list[bytes] = []
    refs: list[Path] = []
    chunks: list[set[int]] = []
    view = bytearray(SIZE)
    for i, path in enumerate(paths):
        fmt = formats[path] = Format.draw(rng)
        backing = paths[i - 1].name if i else None
        if how == "blockdev-create" or (how == "mixed" and rng.random() < 0.5):
            blockdev_create(c, path, path.stem, fmt, backing)
        else:
            qemu_img_create(path, fmt, backing)
        chunks.append(random_writes(rng, path, view))
        views.append(bytes(view))
        ref = tmp / f"{path.stem}.ref"
        ref.write_bytes(views[-1])
        refs.append(ref)
    # The model and QEMU agree before the job.
    same(paths[-1], refs[-1])
    brief = " ".join(formats[p].brief() for p in paths)
    return Chain(paths, refs, views, formats, chunks, f"{how} [{brief}]")


# -- one trial ------------------------------------------------------------------


def node_names(c: Client) -> dict[str, str]:
    """file name -> node name of the qcow2 nodes."""
    nodes = c.ok("query-named-block-nodes")
    return {n["file"]: n["node-name"] for n in nodes if n["drv"] == "qcow2"}


def drain(c: Client) -> list[dict[str, Any]]:
    """Everything the killed daemon had sent; events are kept in ``c.events``,
    replies are returned."""
    replies: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionError, OSError, ValueError):
        while True:
            message = c.recv()
            (c.events if "event" in message else replies).append(message)
    return replies


def send(c: Client, command: str, **arguments: Any) -> None:
    """Send a command without waiting for its reply."""
    c.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode())


def status_seen(c: Client, job: str, status: str, start: int) -> None:
    c.wait_for("JOB_STATUS_CHANGE", start, id=job, status=status)


@dataclass
class Plan:
    kind: str
    variant: str
    #: "running" (a random delay after the reply), "early" (before the reply),
    #: "completion" (right after job-finalize / job-complete)
    moment: str
    speed: int
    delay: float


def to_copy(chain: Chain, variant: str) -> int:
    """About how many bytes the job copies."""
    base, mid, top = chain.chunks
    chunks = {
        "onto-base": mid - top,
        "whole-chain": (base | mid) - top,
        "intermediate": mid,
        "active": top | mid,
        "blockdev-backup": set(range(SIZE >> 16)),
        "drive-backup-full": set(range(SIZE >> 16)),
        "drive-backup-top": top,
    }[variant]
    return max(1, len(chunks)) << 16


def trial(tmp: Path, rng: random.Random, stats: Stats, kind: str, quick: bool) -> str:
    """One chain, one job, one SIGKILL, then the checks; returns what was done."""
    tmp.mkdir()
    daemon = Daemon(tmp / "qmp.sock", None, log=tmp / "daemon.log")
    daemon.start()
    try:
        c = Client(daemon.sock)
        chain = build_chain(tmp, rng, c)
        variant = {
            "stream": rng.choice(["onto-base", "whole-chain"]),
            "commit": rng.choice(["intermediate", "active"]),
            "backup": rng.choice(["blockdev-backup", "drive-backup-full", "drive-backup-top"]),
        }[kind]
        roll = rng.random()
        moment = "completion" if roll < 0.3 else "early" if roll < 0.4 else "running"
        # A speed that makes the job last about ``seconds``; the kill comes
        # at a uniformly random moment of that (or a little after).
        seconds = rng.uniform(0.3, 0.9) if quick else rng.uniform(0.4, 2.0)
        speed = max(128 * KiB, int(to_copy(chain, variant) / seconds))
        plan = Plan(kind, variant, moment, speed, delay=rng.uniform(0.0, 1.1 * seconds))
        what = f"{kind}/{variant} moment={moment} chain={chain.how}"
        if moment == "running":
            what += f" speed={speed >> 10}k kill@{plan.delay:.2f}s"
        try:
            _run_and_kill(c, daemon, rng, chain, plan, tmp, stats)
        except BaseException:
            print(f"trial: {what}")
            raise
        return what
    except BaseException:
        print(daemon.log_text()[-4000:])
        raise
    finally:
        if daemon.proc is not None:
            daemon.kill()


def _run_and_kill(
    c: Client,
    daemon: Daemon,
    rng: random.Random,
    chain: Chain,
    plan: Plan,
    tmp: Path,
    stats: Stats,
) -> None:
    base, mid, top = chain.paths
    ref_base, ref_mid, ref_top = chain.refs
    view_base, view_mid, view_top = chain.views
    c.ok("blockdev-add", driver="qcow2", file={"driver": "file", "filename": str(top)},
         **{"node-name": "top"})  # fmt: skip
    names = node_names(c)
    job = "job"
    manual = plan.moment == "completion"
    if manual and plan.kind == "commit" and plan.variant == "active":
        manual = rng.random() < 0.5  # else killed right after job-complete
    extra: dict[str, Any] = {"job-id": job}
    if manual:
        extra["auto-finalize"] = False
    elif plan.speed:
        extra["speed"] = plan.speed
    target = tmp / "target.qcow2"
    images = [base, mid, top]
    formats = dict(chain.formats)
    #: the header's backing file name of the image whose header the job rewrites,
    #: before and after
    header: tuple[Path, str | None, str | None] | None = None
    if plan.kind == "stream":
        if plan.variant == "onto-base":
            extra["base-node"] = names[str(base)]
            header = (top, mid.name, str(base))
        else:
            header = (top, mid.name, None)
        command, arguments = "block-stream", {"device": "top", **extra}
    elif plan.kind == "commit" and plan.variant == "intermediate":
        extra.update({"top-node": names[str(mid)], "base-node": names[str(base)]})
        header = (top, mid.name, str(base))
        command, arguments = "block-commit", {"device": "top", **extra}
    elif plan.kind == "commit":
        extra["base-node"] = names[str(base)]
        command, arguments = "block-commit", {"device": "top", **extra}
    elif plan.variant == "blockdev-backup":
        fmt = formats[target] = Format.draw(rng)
        if rng.random() < 0.5:
            blockdev_create(c, target, "tgt", fmt)
        else:
            qemu_img_create(target, fmt)
        c.ok("blockdev-add", driver="qcow2", file={"driver": "file", "filename": str(target)},
             **{"node-name": "tgt"})  # fmt: skip
        images.append(target)
        extra.update({"device": "top", "target": "tgt", "sync": "full"})
        command, arguments = "blockdev-backup", extra
    else:
        formats[target] = Format()  # what drive-backup creates
        sync = "top" if plan.variant == "drive-backup-top" else "full"
        extra.update(
            {
                "device": "top",
                "target": str(target),
                "format": "qcow2",
                "mode": "absolute-paths",
                "sync": sync,
            }
        )
        command, arguments = "drive-backup", extra

    start = len(c.events)
    reply: dict[str, Any] | None = None
    if plan.moment == "early":
        send(c, command, **arguments)
        time.sleep(rng.uniform(0.0, 0.05))
        stats.before_reply += 1
    else:
        reply = c.execute(command, **arguments)
        assert "return" in reply, reply
        if plan.moment == "running":
            time.sleep(plan.delay)
        else:
            stats.at_completion += 1
            if plan.kind == "commit" and plan.variant == "active":
                status_seen(c, job, "ready", start)
                if manual:
                    c.ok("job-complete", id=job)
                else:
                    send(c, "job-complete", id=job)
            if manual:
                status_seen(c, job, "pending", start)
                send(c, "job-finalize", id=job)
            # Mostly at once: the graph change takes a few milliseconds.
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.005), rng.uniform(0.0, 0.02)]))
    daemon.kill()
    stats.kills += 1
    stats.kinds[plan.kind] += 1
    replies = drain(c)
    c.close()
    if reply is None:
        reply = replies[0] if replies else None
    completed = any(
        e["event"] == "BLOCK_JOB_COMPLETED"
        and e["data"]["device"] == job
        and "error" not in e["data"]
        for e in c.events[start:]
    )
    stats.completed += completed

    # -- qemu-img check on every image ----------------------------------------
    if plan.kind == "backup" and plan.variant != "blockdev-backup":
        with open(target, "rb") if target.exists() else contextlib.nullcontext(None) as f:
            born = f is not None and f.read(4) == MAGIC
        if born:
            images.append(target)
        else:
            # The daemon writes a new image's header last: before that, it
            # is no image at all; and the command has not answered yet.
            assert reply is None or "error" in reply, reply
            stats.unborn += 1
    for image in images:
        check_image(image, formats[image].lazy, stats)

    # -- the data ---------------------------------------------------------------
    same(top, ref_top)  # the top's chain reads the same whatever happened
    if header is not None:
        path, old, new = header
        now = header_backing(path)
        assert now in (old, new), (path.name, now, old, new)
        if completed:
            assert now == new, (path.name, now, new)
    if plan.kind == "stream":
        same(mid, ref_mid)
        same(base, ref_base)
    elif plan.variant == "intermediate":
        same(mid, ref_mid)  # the base holds, under mid, what mid holds
        if completed:
            same(base, ref_mid)
        else:
            pages_either(base, view_base, view_mid, formats[base])
    elif plan.variant == "active":
        if completed:
            same(base, ref_top)
        else:
            pages_either(base, view_base, view_top, formats[base])
    else:
        same(mid, ref_mid)
        same(base, ref_base)
        if target in images:
            if plan.variant == "drive-backup-top":
                assert header_backing(target) == str(mid)
                before = view_mid
            else:
                assert header_backing(target) is None
                before = bytes(SIZE)
            if completed:
                same(target, ref_top)
            else:
                pages_either(target, before, view_top, formats[target])


def crash_run(root: Path, kills: int, seed: int, *, quick: bool) -> Stats:
    rng = random.Random(seed)
    stats = Stats()
    for n in range(kills):
        kind = KINDS[n % len(KINDS)]
        tmp = root / f"t{n}"
        try:
            completed = stats.completed
            what = trial(tmp, rng, stats, kind, quick)
            print(f"kill {n + 1}: {what}{' (completed)' if stats.completed > completed else ''}")
        except BaseException:
            print(f"seed={seed} kill {n + 1} of {kills} ({kind}); files kept in {tmp}")
            print(stats.line())
            raise
        shutil.rmtree(tmp)
    return stats


@pytest.mark.timeout(90)
def test_sigkill_during_chain_jobs_quick(sock_dir: Path) -> None:
    t0 = time.monotonic()
    stats = crash_run(sock_dir, kills=5 * len(KINDS), seed=3, quick=True)
    elapsed = time.monotonic() - t0
    print(f"{stats.line()}; {elapsed:.1f} s")
    assert stats.kills == 15
    assert set(stats.kinds) == set(KINDS)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_during_chain_jobs(sock_dir: Path) -> None:
    kills = int(os.environ.get("CHAIN_CRASH_KILLS", "120"))
    seed = int(os.environ.get("CHAIN_CRASH_SEED", "4"))
    t0 = time.monotonic()
    stats = crash_run(sock_dir, kills=kills, seed=seed, quick=False)
    print(f"seed={seed}: {stats.line()}; {time.monotonic() - t0:.1f} s")
    assert stats.kills == kills


# -- the driver's writes, cut at every point -------------------------------------
#
# The same question without timing: the writes a chain job makes into a qcow2
# layer (copy-on-read of a stream: data and zeros through a backing image,
# then the header's new backing file, then the clean close) are recorded, and
# the image is rebuilt as a crash would leave it: after any number of writes
# (a SIGKILL; the last one possibly torn at a page boundary), or after a sync
# with any of the writes issued since lost (a power cut: only what was synced
# is sure to be there). Every such image passes qemu-img check.


class RecordingFile(FdHostFile):
    """A host file that logs what it does: ("w", offset, data), ("t", size), ("s",)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.log: list[tuple[Any, ...]] = []

    def pwrite(self, offset: int, data: bytes) -> None:
        self.log.append(("w", offset, bytes(data)))
        super().pwrite(offset, data)

    def truncate(self, size: int) -> None:
        self.log.append(("t", size))
        super().truncate(size)

    def sync(self) -> None:
        self.log.append(("s",))


def replay(initial: bytes, entries: list[tuple[Any, ...]]) -> bytes:
    image = bytearray(initial)
    for entry in entries:
        if entry[0] == "w":
            _, offset, data = entry
            if len(image) < offset + len(data):
                image.extend(bytes(offset + len(data) - len(image)))
            image[offset : offset + len(data)] = data
        elif entry[0] == "t":
            del image[entry[1] :]
            image.extend(bytes(entry[1] - len(image)))
    return bytes(image)


def torn(entry: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A write cut at its first page boundary (None: it spans no boundary)."""
    if entry[0] != "w":
        return None
    _, offset, data = entry
    cut = (offset // PAGE + 1) * PAGE - offset
    return ("w", offset, data[:cut]) if cut < len(data) else None


def stream_like_writes(path: Path, base: Path, rng: random.Random) -> list[tuple[Any, ...]]:
    """What a stream into ``path`` writes: copy-on-read of random ranges
    (data, and zeros as write-zeroes), the new backing file, the close."""
    backing = base.read_bytes()

    def reader(offset: int, length: int) -> bytes:
        return backing[offset : offset + length].ljust(length, b"\0")

    fd = os.open(path, os.O_RDWR)
    host = RecordingFile(fd)
    try:
        image = Qcow2Image.open(host)
        for _ in range(32):
            offset = rng.randrange(0, SIZE - 1, 512)
            length = rng.randrange(512, min(SIZE - offset, 384 * KiB) + 1, 512)
            if rng.random() < 0.25:
                image.write_zeroes(offset, length, reader)
            else:
                image.write(offset, bytes([rng.randrange(1, 256)]) * length, reader)
        image.set_backing(None)
        image.close()
    finally:
        os.close(fd)
    return host.log


@pytest.mark.parametrize(
    "fmt",
    [
        Format(3, 512, refcount_bits=64),  # the refcount table moves
        Format(3, 4096, lazy=True),
        Format(3, 65536),
        Format(2, 4096),
    ],
    ids=lambda f: f.brief(),
)
def test_every_cut_of_a_layers_writes_passes_qemu_img_check(tmp_path: Path, fmt: Format) -> None:
    rng = random.Random(fmt.cluster_size + fmt.version)
    base = tmp_path / "base.raw"
    base.write_bytes(rng.randbytes(SIZE))
    path = tmp_path / "top.qcow2"
    create_path(
        path,
        SIZE,
        version=fmt.version,
        cluster_size=fmt.cluster_size,
        lazy_refcounts=fmt.lazy,
        refcount_bits=fmt.refcount_bits,
        backing_file=str(base),
        backing_format="raw",
    )
    initial = path.read_bytes()
    log = stream_like_writes(path, base, rng)
    final = path.read_bytes()
    assert replay(initial, log) == final
    if fmt.refcount_bits == 64:  # the header's refcount table fields were rewritten
        assert any(e[0] == "w" and e[1] == 48 and len(e[2]) == 12 for e in log)
    stats = Stats()
    cuts: list[tuple[str, bytes]] = []
    # A SIGKILL after any write (a sample of them, and every header write),
    # the last write torn at a page boundary or not.
    writes = [i for i, e in enumerate(log) if e[0] != "s"]
    chosen = set(rng.sample(writes, min(40, len(writes))))
    chosen |= {i for i in writes if log[i][0] == "w" and log[i][1] < fmt.cluster_size}
    for i in sorted(chosen):
        cuts.append((f"killed before write {i}", replay(initial, log[:i])))
        half = torn(log[i])
        if half is not None:
            cuts.append((f"killed in write {i}", replay(initial, [*log[:i], half])))
    # A power cut: everything up to a sync, and some of the writes after it.
    syncs = [i for i, e in enumerate(log) if e[0] == "s"]
    for i in rng.sample(syncs, min(15, len(syncs))):
        after = []
        for entry in log[i + 1 :]:
            if entry[0] == "s":
                break
            after.append(entry)
        kept = [e for e in after if e[0] == "t" or rng.random() < 0.5]
        cuts.append((f"power cut after sync {i}", replay(initial, [*log[:i], *kept])))
    for what, content in cuts:
        path.write_bytes(content)
        try:
            check_image(path, fmt.lazy, stats)
        except AssertionError as exc:
            raise AssertionError(f"{fmt.brief()}, {what} of {len(log)}: {exc}") from None
    print(
        f"{fmt.brief()}: {len(log)} writes and syncs, {stats.images} cuts checked, "
        f"{stats.leaks} leaked clusters in {stats.leaky_images}, {stats.repaired} dirty repaired"
    )
