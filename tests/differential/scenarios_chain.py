"""qcow2 scenarios: backing chains made by ``qemu-img``, opened with
``blockdev-add`` (implicit backing nodes, backing by node name, ``null``),
``query-named-block-nodes``, the rules between layers, jobs on qcow2 nodes.

Collected into :data:`tests.differential.scenarios.ALL`. The images are
prepared by ``run`` steps (``qemu-img``, ``qemu-io``) in the run's folder.
No scenario opens one image file twice: QEMU locks image files, qmpjobd
does not.
"""

from __future__ import annotations

from .model import JSON, Scenario, Step
from .scenarios_jobs import E, ask, null, q, qb, start_backup, start_mirror
from .steps import J, MiB, connect, jobs, negotiate

KiB = 1024


def run(*argv: str) -> Step:
    return Step(0, "run", tuple(a.encode() for a in argv))


def img(name: str) -> str:
    return "{tmp}/" + name


def overlay(name: str, backing: str) -> Step:
    """``qemu-img create`` of the qcow2 image ``name`` over ``backing`` (a relative name)."""
    return run("qemu-img", "create", "-f", "qcow2", "-b", backing, "-F", "qcow2", img(name))


def chain() -> list[Step]:
    """base <- mid <- top, 1 MiB: base holds 1s at 0, mid 2s at 64k, top 3s at 128k."""
    return [
        run("qemu-img", "create", "-f", "qcow2", img("base.qcow2"), "1M"),
        run("qemu-io", "-c", "write -P 1 0 64k", img("base.qcow2")),
        overlay("mid.qcow2", "base.qcow2"),
        run("qemu-io", "-c", "write -P 2 64k 64k", img("mid.qcow2")),
        overlay("top.qcow2", "mid.qcow2"),
        run("qemu-io", "-c", "write -P 3 128k 64k", img("top.qcow2")),
    ]


def qcow2(name: str, image: str, **extra: JSON) -> dict[str, JSON]:
    return {"driver": "qcow2", "node-name": name, "file": file(image), **extra}


def file(image: str) -> dict[str, JSON]:
    return {"driver": "file", "filename": img(image)}


def qn(rid: str) -> Step:
    return ask("query-named-block-nodes", None, rid)


def start() -> list[Step]:
    return [connect(0), negotiate(0), *chain()]


def create(job: str, file: JSON, size: int = MiB, **extra: JSON) -> Step:
    """blockdev-create of a qcow2 image; waits for the job to conclude."""
    options = {"driver": "qcow2", "file": file, "size": size, **extra}
    return ask("blockdev-create", {"job-id": job, "options": options}, job, J("concluded", job))


def dismiss(job: str) -> Step:
    return ask("job-dismiss", {"id": job}, f"dismiss-{job}", J("null", job))


CREATE_ERRORS: tuple[tuple[str, dict[str, JSON]], ...] = (
    ("e-size", {"size": 1000, "cluster-size": 1000}),
    ("e-cluster", {"cluster-size": 1000, "backing-fmt": "qcow2"}),
    ("e-cluster-big", {"cluster-size": 4 * MiB}),
    ("e-prealloc", {"backing-file": "base.qcow2", "preallocation": "metadata"}),
    ("e-fmt", {"backing-fmt": "qcow2", "version": "v2", "lazy-refcounts": True}),
    ("e-lazy", {"version": "v2", "lazy-refcounts": True, "refcount-bits": 3}),
    ("e-bits", {"version": "v2", "refcount-bits": 3}),
    ("e-bits-v2", {"version": "v2", "refcount-bits": 8}),
    ("e-bits-big", {"refcount-bits": 128}),
)


CHAIN: tuple[Scenario, ...] = (
    jobs(
        "chain_qcow2_implicit_backing",
        "A qcow2 node opens the backing chain its header names as implicit nodes; "
        "query-named-block-nodes; the backing layers are busy and not the monitor's.",
        [
            *start(),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            qn("qn"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            qn("qn-empty"),
        ],
    ),
    jobs(
        "chain_qcow2_backing_refs",
        "backing as a node name, as null and as nested options; blockdev-del of a "
        "backing node; errors opening qcow2 nodes and their backing files.",
        [
            *start(),
            run(
                "qemu-img",
                "create",
                "-f",
                "qcow2",
                "-b",
                "gone.qcow2",
                "-F",
                "qcow2",
                "-u",
                img("orphan.qcow2"),
                "1M",
            ),
            run("qemu-img", "create", "-f", "raw", img("raw.img"), "1M"),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing=None), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            qn("qn"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid-2"),
            ask("blockdev-del", {"node-name": "base"}, "del-base"),
            ask("blockdev-add", qcow2("o1", "orphan.qcow2"), "orphan"),
            ask("blockdev-add", qcow2("o2", "orphan.qcow2", backing=None), "orphan-null"),
            ask("blockdev-add", qcow2("r1", "raw.img"), "not-qcow2"),
            ask("blockdev-add", qcow2("r2", "top.qcow2", backing="nope"), "no-backing-node"),
            ask(
                "blockdev-add",
                {"driver": "null-co", "node-name": "n", "size": MiB},
                "add-null",
            ),
            ask("blockdev-add", {"driver": "qcow2", "node-name": "r3", "file": "n"}, "on-null"),
            ask(
                "blockdev-add",
                qcow2("b2", "base.qcow2", backing={"driver": "null-co", "size": MiB}),
                "nested-null",
            ),
            ask(
                "blockdev-add",
                qcow2(
                    "t2",
                    "top.qcow2",
                    backing={"driver": "qcow2", "file": file("mid.qcow2"), "backing": None},
                ),
                "nested-qcow2",
            ),
            qn("qn-2"),
            ask("blockdev-del", {"node-name": "n"}, "del-n"),
            ask("blockdev-del", {"node-name": "t2"}, "del-t2"),
            ask("blockdev-add", qcow2("t", "top.qcow2", backing=7), "bad-type"),
        ],
    ),
    jobs(
        "chain_qcow2_backup_to_raw",
        "A backup of a qcow2 chain's top into a raw file and into a qcow2 image.",
        [
            *start(),
            run("qemu-img", "create", "-f", "raw", img("out.img"), "1M"),
            run("qemu-img", "create", "-f", "qcow2", img("out.qcow2"), "1M"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "blockdev-add",
                {"driver": "raw", "node-name": "out", "file": file("out.img")},
                "add-out",
            ),
            ask("blockdev-add", qcow2("outq", "out.qcow2"), "add-outq"),
            ask(
                "blockdev-backup",
                {"job-id": "j1", "device": "top", "target": "out", "sync": "full"},
                "backup",
                J("null"),
            ),
            ask(
                "blockdev-backup",
                {"job-id": "j2", "device": "top", "target": "outq", "sync": "full"},
                "backup-q",
                J("null", "j2"),
            ),
            q("q"),
        ],
    ),
    jobs(
        "chain_create_qcow2",
        "blockdev-create of qcow2 images on file nodes (a chain: base, then an "
        "overlay naming it); each refused option; the new images opened and queried.",
        [
            connect(0),
            negotiate(0),
            run("touch", img("base.qcow2"), img("top.qcow2"), img("ro.qcow2"), img("x.qcow2")),
            ask("blockdev-add", {"node-name": "fb", **file("base.qcow2")}, "add-fb"),
            ask("blockdev-add", {"node-name": "ft", **file("top.qcow2")}, "add-ft"),
            ask("blockdev-add", {"node-name": "fx", **file("x.qcow2")}, "add-fx"),
            ask(
                "blockdev-add",
                {"node-name": "fro", "read-only": True, **file("ro.qcow2")},
                "add-fro",
            ),
            create("c1", "fb", 2 * MiB, **{"cluster-size": 4096, "refcount-bits": 64}),
            q("q-c1"),
            dismiss("c1"),
            create(
                "c2",
                "ft",
                2 * MiB,
                **{"backing-file": "base.qcow2", "backing-fmt": "qcow2", "lazy-refcounts": True},
            ),
            dismiss("c2"),
            create("c3", {"driver": "file", "filename": img("v2.qcow2")}, version="v2"),
            q("q-c3"),
            dismiss("c3"),
            run("touch", img("v2.qcow2")),
            create("c4", {"driver": "file", "filename": img("v2.qcow2")}, version="v2"),
            dismiss("c4"),
            create("c5", "fx", preallocation="metadata"),
            dismiss("c5"),
            *[
                step
                for name, extra in CREATE_ERRORS
                for step in (create(name, "fx", **extra), q(f"q-{name}"), dismiss(name))
            ],
            create("e-node", "nope"),
            q("q-e-node"),
            dismiss("e-node"),
            create("e-ro", "fro"),
            q("q-e-ro"),
            dismiss("e-ro"),
            ask(
                "blockdev-create",
                {"job-id": "e-arg", "options": {"driver": "qcow2", "file": "fx"}},
                "e-arg",
            ),
            ask(
                "blockdev-create",
                {
                    "job-id": "e-ver",
                    "options": {"driver": "qcow2", "file": "fx", "size": 0, "version": "v4"},
                },
                "e-ver",
            ),
            ask("blockdev-del", {"node-name": "fb"}, "del-fb"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask("blockdev-add", qcow2("v2", "v2.qcow2"), "add-v2"),
            ask("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": "fx"}, "add-x"),
            qn("qn"),
        ],
    ),
    jobs(
        "chain_stream_implicit",
        "block-stream of a chain opened from the headers: with base (a backing file "
        "name), the layer between leaves the graph; then the whole chain.",
        [
            *start(),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "block-stream",
                {"job-id": "s1", "device": "top", "base": "base.qcow2"},
                "stream-base",
                J("null", "s1"),
            ),
            qn("qn-1"),
            ask("block-stream", {"job-id": "s2", "device": "top"}, "stream-all", J("null", "s2")),
            qn("qn-2"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-again"),
            qn("qn-3"),
        ],
        progress=True,
    ),
    jobs(
        "chain_stream_nodes",
        "block-stream on a chain of named nodes: argument checks in QEMU's order, "
        "base-node with backing-file, bottom, nothing to stream, manual finalize.",
        [
            *start(),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask("blockdev-add", {"driver": "null-co", "node-name": "n"}, "add-n"),
            *[
                ask("block-stream", {"job-id": "e", **args}, f"e{i}")
                for i, args in enumerate(
                    [
                        {"device": "top", "base": "x", "base-node": "y"},
                        {"device": "top", "base": "x", "bottom": "y"},
                        {"device": "top", "bottom": "x", "base-node": "y"},
                        {"device": "nope", "base": "x"},
                        {"device": "top", "base": "x"},
                        {"device": "top", "base-node": "nope"},
                        {"device": "top", "base-node": "n"},
                        {"device": "top", "base-node": "top"},
                        {"device": "top", "bottom": "nope"},
                        {"device": "top", "bottom": "n"},
                        {"device": "top", "backing-file": "foo"},
                        {"device": "top", "bottom": "mid", "backing-file": "foo"},
                        {"device": "top", "base-node": "base", "job-id": "1x"},
                        {"device": "top", "base-node": "base", "on-error": "bad"},
                    ]
                )
            ],
            ask("block-stream", {"device": "top", "base-node": "base"}, "no-id"),
            ask(
                "block-stream",
                {"device": "top", "base-node": "base", "job-id": "s0", "speed": -1},
                "speed-neg",
                J("null", "s0"),
            ),
            ask(
                "block-stream",
                {"device": "mid", "base-node": "base", "job-id": "s1"},
                "nothing",
                J("null", "s1"),
            ),
            ask(
                "block-stream",
                {
                    "device": "top",
                    "base-node": "base",
                    "job-id": "s2",
                    "backing-file": "base.qcow2",
                    "auto-finalize": False,
                    "auto-dismiss": False,
                },
                "stream",
                E("BLOCK_JOB_PENDING", "s2"),
            ),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid-busy"),
            q("q-pending"),
            ask("job-finalize", {"id": "s2"}, "finalize", J("concluded", "s2")),
            ask("job-dismiss", {"id": "s2"}, "dismiss", J("null", "s2")),
            qn("qn"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask(
                "block-stream",
                {"device": "top", "bottom": "top", "job-id": "s3"},
                "bottom-self",
                J("null", "s3"),
            ),
            ask("block-stream", {"device": "top", "job-id": "s4"}, "all", J("null", "s4")),
            qn("qn-2"),
        ],
        progress=True,
    ),
    jobs(
        "chain_stream_verbs",
        "A rate-limited block-stream: query, pause, resume, set-speed, complete "
        "refused, cancel; then the whole chain streamed.",
        [
            connect(0),
            negotiate(0),
            run("qemu-img", "create", "-f", "qcow2", img("base.qcow2"), "8M"),
            overlay("mid.qcow2", "base.qcow2"),
            run("qemu-io", "-c", "write -P 2 0 4M", img("mid.qcow2")),
            overlay("top.qcow2", "mid.qcow2"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "block-stream",
                {"job-id": "s1", "device": "top", "speed": 1, "auto-dismiss": False},
                "stream",
                J("running", "s1"),
            ),
            ask("query-block-jobs", None, "qb"),
            ask("job-pause", {"id": "s1"}, "pause", J("paused", "s1")),
            ask("block-job-resume", {"device": "s1"}, "resume", J("running", "s1")),
            ask("block-job-set-speed", {"device": "s1", "speed": 2}, "speed"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("job-complete", {"id": "s1"}, "complete"),
            ask("block-job-complete", {"device": "s1"}, "bcomplete"),
            ask(
                "block-job-cancel",
                {"device": "s1"},
                "cancel",
                J("aborting", "s1"),
                E("BLOCK_JOB_CANCELLED", "s1"),
                J("concluded", "s1"),
            ),
            q("q"),
            ask("job-dismiss", {"id": "s1"}, "dismiss", J("null", "s1")),
            ask("block-stream", {"job-id": "s2", "device": "top"}, "again", J("null", "s2")),
            qn("qn"),
        ],
        progress=True,
    ),
    jobs(
        "chain_commit_checks",
        "block-commit on a chain of named nodes: argument checks in QEMU's order, "
        "then an intermediate commit with backing-file and one without.",
        [
            *start(),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask("blockdev-add", {"driver": "null-co", "node-name": "n"}, "add-n"),
            *[
                ask("block-commit", args, f"e{i}")
                for i, args in enumerate(
                    [
                        {"device": "nope"},
                        {"device": "mid"},
                        {"device": "top", "top": "x", "top-node": "mid"},
                        {"device": "top", "top-node": "nope"},
                        {"device": "top", "top-node": "n"},
                        {"device": "top", "top": "x"},
                        {"device": "top", "base": "x", "base-node": "mid"},
                        {"device": "top", "base-node": "nope"},
                        {"device": "top", "base-node": "n"},
                        {"device": "top", "base": "x"},
                        {"device": "top", "top-node": "base"},
                        {"device": "top", "top-node": "mid", "base-node": "mid"},
                        {"device": "top", "top-node": "mid", "base-node": "top"},
                        {"device": "top", "backing-file": "x"},
                        {"device": "top"},
                        {"device": "top", "top-node": "mid", "job-id": "1x"},
                        {"device": "n", "job-id": "c0"},
                    ]
                )
            ],
            ask(
                "block-commit",
                {"device": "top", "top-node": "mid", "job-id": "c0", "speed": -1},
                "speed-neg",
                J("null", "c0"),
            ),
            ask(
                "block-commit",
                {
                    "device": "top",
                    "top-node": "mid",
                    "base-node": "base",
                    "job-id": "c1",
                    "backing-file": "base.qcow2",
                    "auto-dismiss": False,
                },
                "commit",
                J("concluded", "c1"),
            ),
            q("q"),
            ask("job-dismiss", {"id": "c1"}, "dismiss", J("null", "c1")),
            qn("qn"),
        ],
        progress=True,
    ),
    jobs(
        "chain_commit_implicit",
        "Intermediate commit of a chain opened from the headers (top by file name, "
        "default base): the committed layer leaves the graph.",
        [
            *start(),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "block-commit",
                {"device": "top", "top": "mid.qcow2", "job-id": "c1"},
                "commit",
                J("null", "c1"),
            ),
            qn("qn"),
        ],
        progress=True,
    ),
    jobs(
        "chain_commit_active",
        "Active commit: READY, a soft cancel in READY completes it; again, "
        "job-complete; the base is written, the graph stays.",
        [
            *start(),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "block-commit",
                {"device": "top", "job-id": "a1"},
                "commit",
                J("ready", "a1"),
                E("BLOCK_JOB_READY", "a1"),
            ),
            qb("qb"),
            ask("block-job-cancel", {"device": "a1"}, "cancel", J("null", "a1")),
            qn("qn-1"),
            ask(
                "block-commit",
                {"device": "top", "job-id": "a2", "auto-finalize": False},
                "commit-2",
                J("ready", "a2"),
                E("BLOCK_JOB_READY", "a2"),
            ),
            ask("job-pause", {"id": "a2"}, "pause", J("standby", "a2")),
            ask("job-resume", {"id": "a2"}, "resume", J("ready", "a2")),
            ask("job-complete", {"id": "a2"}, "complete", E("BLOCK_JOB_PENDING", "a2")),
            ask("job-finalize", {"id": "a2"}, "finalize", J("null", "a2")),
            qn("qn-2"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            qn("qn-3"),
        ],
        progress=True,
    ),
    jobs(
        "chain_backup_mirror_qcow2",
        "Backups and mirrors of a qcow2 chain: sync top onto a raw node; drive-backup "
        "and drive-mirror creating qcow2 targets (full, top over the source's backing, "
        "none over the source), mode existing.",
        [
            *start(),
            run("qemu-img", "create", "-f", "raw", img("out.img"), "1M"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            ask(
                "blockdev-add",
                {"driver": "raw", "node-name": "out", "file": file("out.img")},
                "add-out",
            ),
            ask(
                "blockdev-backup",
                {"job-id": "b1", "device": "top", "target": "out", "sync": "top"},
                "backup-top",
                J("null", "b1"),
            ),
            *[
                ask(
                    "drive-backup",
                    {
                        "job-id": job,
                        "device": "top",
                        "target": img(name),
                        "format": "qcow2",
                        "sync": sync,
                        **extra,
                    },
                    job,
                    J("null", job),
                )
                for job, name, sync, extra in (
                    ("b2", "db-full.qcow2", "full", {}),
                    ("b3", "db-top.qcow2", "top", {}),
                    ("b4", "db-full.qcow2", "full", {"mode": "existing"}),
                )
            ],
            ask(
                "drive-backup",
                {
                    "job-id": "b5",
                    "device": "top",
                    "target": img("nothere.qcow2"),
                    "format": "qcow2",
                    "sync": "full",
                    "mode": "existing",
                },
                "b5",
            ),
            ask(
                "drive-backup",
                {
                    "job-id": "b6",
                    "device": "top",
                    "target": img("db-none.img"),
                    "format": "raw",
                    "sync": "none",
                },
                "b6",
            ),
            ask(
                "drive-backup",
                {
                    "job-id": "b7",
                    "device": "top",
                    "target": img("db-none.qcow2"),
                    "format": "qcow2",
                    "sync": "none",
                },
                "b7",
                J("running", "b7"),
            ),
            ask("job-cancel", {"id": "b7"}, "cancel-b7", J("null", "b7")),
            *[
                step
                for job, name, sync in (
                    ("m1", "dm-top.qcow2", "top"),
                    ("m2", "dm-full.qcow2", "full"),
                )
                for step in (
                    ask(
                        "drive-mirror",
                        {
                            "job-id": job,
                            "device": "top",
                            "target": img(name),
                            "format": "qcow2",
                            "sync": sync,
                        },
                        job,
                        J("ready", job),
                        E("BLOCK_JOB_READY", job),
                    ),
                    ask("job-complete", {"id": job}, f"complete-{job}", J("null", job)),
                )
            ],
            q("q"),
        ],
    ),
    jobs(
        "chain_stream_bottom",
        "block-stream with bottom: the layers down to bottom go into the top, "
        "whose header then names bottom's backing node's file.",
        [
            *start(),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask(
                "block-stream",
                {"job-id": "s1", "device": "top", "bottom": "mid"},
                "stream",
                J("null", "s1"),
            ),
            qn("qn"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing=None), "add-top-again"),
            qn("qn-2"),
        ],
    ),
    jobs(
        "chain_backing_node_rules",
        "What a backing node allows: two overlays on one backing node, backup from "
        "and onto it; mirror from it (not a root node) and onto it (busy), "
        "blockdev-del of a backing node, qcow2 over a raw node.",
        [
            *start(),
            overlay("top2.qcow2", "mid.qcow2"),
            run("qemu-img", "create", "-f", "raw", img("r.img"), "1M"),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask(
                "blockdev-add", {"driver": "raw", "node-name": "r", "file": file("r.img")}, "add-r"
            ),
            ask("blockdev-add", qcow2("top2", "top2.qcow2", backing="mid"), "add-top2"),
            ask(
                "blockdev-backup",
                {"job-id": "b1", "device": "r", "target": "mid", "sync": "full"},
                "backup-onto",
                J("null", "b1"),
            ),
            ask(
                "blockdev-backup",
                {"job-id": "b2", "device": "mid", "target": "r", "sync": "full"},
                "backup-from",
                J("null", "b2"),
            ),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "mid", "target": "r", "sync": "full"},
                "mirror-from",
            ),
            ask(
                "blockdev-mirror",
                {"job-id": "m2", "device": "r", "target": "mid", "sync": "full"},
                "mirror-onto",
            ),
            ask("blockdev-del", {"node-name": "base"}, "del-base"),
            ask("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": "r"}, "on-raw"),
            q("q"),
        ],
    ),
    jobs(
        "chain_commit_verbs",
        "A rate-limited intermediate block-commit: query, pause, resume, set-speed, "
        "complete refused, cancel; then committed in full.",
        [
            connect(0),
            negotiate(0),
            run("qemu-img", "create", "-f", "qcow2", img("base.qcow2"), "8M"),
            overlay("mid.qcow2", "base.qcow2"),
            run("qemu-io", "-c", "write -P 2 0 4M", img("mid.qcow2")),
            overlay("top.qcow2", "mid.qcow2"),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask(
                "block-commit",
                {
                    "job-id": "c1",
                    "device": "top",
                    "top-node": "mid",
                    "speed": 1,
                    "auto-dismiss": False,
                },
                "commit",
                J("running", "c1"),
            ),
            ask("job-pause", {"id": "c1"}, "pause", J("paused", "c1")),
            ask("block-job-resume", {"device": "c1"}, "resume", J("running", "c1")),
            ask("block-job-set-speed", {"device": "c1", "speed": 2}, "speed"),
            ask("job-complete", {"id": "c1"}, "complete"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-del", {"node-name": "base"}, "del-base"),
            ask(
                "block-job-cancel",
                {"device": "c1"},
                "cancel",
                J("aborting", "c1"),
                E("BLOCK_JOB_CANCELLED", "c1"),
                J("concluded", "c1"),
            ),
            q("q"),
            ask("job-dismiss", {"id": "c1"}, "dismiss", J("null", "c1")),
            ask(
                "block-commit",
                {"job-id": "c2", "device": "top", "top-node": "mid"},
                "again",
                J("null", "c2"),
            ),
            qn("qn"),
        ],
        progress=True,
    ),
    jobs(
        "chain_qcow2_locks",
        "Image locks between nodes on the same file: a second writer, a reader of a "
        "written image, a backing file someone writes; readers share; locks go with "
        "their nodes.",
        [
            *start(),
            ask("blockdev-add", qcow2("base", "base.qcow2"), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing=None), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask("blockdev-add", qcow2("top2", "top.qcow2", backing="base"), "second-writer"),
            ask(
                "blockdev-add",
                qcow2("top3", "top.qcow2", backing="mid", **{"read-only": True}),
                "reader-of-written",
            ),
            ask("blockdev-add", {"node-name": "topf", **file("top.qcow2")}, "add-topf"),
            ask(
                "blockdev-add",
                {"driver": "qcow2", "node-name": "top4", "file": "topf", "backing": "mid"},
                "writer-over-file-node",
            ),
            ask("blockdev-add", qcow2("m2", "mid.qcow2"), "backing-written"),
            ask(
                "blockdev-add",
                qcow2("m3", "mid.qcow2", backing=None, **{"read-only": True}),
                "reader-of-mid",
            ),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask(
                "blockdev-add",
                qcow2("r1", "mid.qcow2", backing=None, **{"read-only": True}),
                "reader-1",
            ),
            ask(
                "blockdev-add",
                qcow2("r2", "mid.qcow2", backing=None, **{"read-only": True}),
                "reader-2",
            ),
            ask("blockdev-add", qcow2("w", "mid.qcow2", backing=None), "writer-of-read"),
            ask(
                "blockdev-add",
                {"driver": "qcow2", "node-name": "top5", "file": "topf", "backing": "r1"},
                "writer-after-del",
            ),
            qn("qn"),
        ],
    ),
    jobs(
        "chain_graph_changes_drain_unrelated_jobs",
        "qcow2 chains opened and deleted, block-stream, an intermediate and an "
        "active block-commit (read-only layers reopened) and qcow2 blockdev-create "
        "beside a running backup and a READY mirror on other nodes: 10.0 pauses "
        "both once per write-locked section of each step, 7.2 neither.",
        [
            *start(),
            run("qemu-img", "create", "-f", "qcow2", img("b-base.qcow2"), "1M"),
            run("qemu-io", "-c", "write -P 1 0 64k", img("b-base.qcow2")),
            overlay("b-mid.qcow2", "b-base.qcow2"),
            run("qemu-io", "-c", "write -P 2 64k 64k", img("b-mid.qcow2")),
            overlay("b-top.qcow2", "b-mid.qcow2"),
            run("touch", img("new1.qcow2"), img("new2.qcow2")),
            *[
                ask("blockdev-add", null(name), f"add-{name}")
                for name in ("src", "tgt", "msrc", "mtgt")
            ],
            start_backup(),
            start_mirror("m1", "msrc", "mtgt"),
            ask("blockdev-add", qcow2("base", "base.qcow2", backing=None), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask(
                "block-stream",
                {"job-id": "s1", "device": "top", "base-node": "base"},
                "stream",
                J("null", "s1"),
            ),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask("blockdev-del", {"node-name": "base"}, "del-base"),
            # b-top opens b-mid and b-base from its header, read-only.
            ask("blockdev-add", qcow2("btop", "b-top.qcow2"), "add-btop"),
            ask(
                "block-commit",
                {
                    "job-id": "c1",
                    "device": "btop",
                    "top": img("b-mid.qcow2"),
                    "base": img("b-base.qcow2"),
                },
                "commit",
                J("null", "c1"),
            ),
            ask(
                "block-commit",
                {"job-id": "a1", "device": "btop"},
                "commit-active",
                J("ready", "a1"),
                E("BLOCK_JOB_READY", "a1"),
            ),
            ask("job-complete", {"id": "a1"}, "complete-a1", J("null", "a1")),
            ask("blockdev-del", {"node-name": "btop"}, "del-btop"),
            ask("blockdev-add", {**file("new1.qcow2"), "node-name": "fx"}, "add-fx"),
            create("c2", "fx"),
            dismiss("c2"),
            create("c3", file("new2.qcow2")),
            dismiss("c3"),
            ask("job-cancel", {"id": "m1"}, "cancel-m1", J("null", "m1")),
            ask("job-cancel", {"id": "j1"}, "cancel-j1", J("null", "j1")),
        ],
    ),
    jobs(
        "chain_concluded_job_keeps_its_nodes",
        "A concluded block-stream or block-commit that waits to be dismissed still "
        "holds the nodes it took (blockdev-del and a new job find them busy); "
        "job-dismiss lets them go.",
        [
            *start(),
            run("qemu-img", "create", "-f", "qcow2", img("b-base.qcow2"), "1M"),
            overlay("b-mid.qcow2", "b-base.qcow2"),
            run("qemu-io", "-c", "write -P 2 64k 64k", img("b-mid.qcow2")),
            overlay("b-top.qcow2", "b-mid.qcow2"),
            ask("blockdev-add", qcow2("base", "base.qcow2", backing=None), "add-base"),
            ask("blockdev-add", qcow2("mid", "mid.qcow2", backing="base"), "add-mid"),
            ask("blockdev-add", qcow2("top", "top.qcow2", backing="mid"), "add-top"),
            ask(
                "block-stream",
                {"job-id": "s1", "device": "top", "base-node": "base", "auto-dismiss": False},
                "stream",
                J("concluded", "s1"),
            ),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid"),
            ask("blockdev-del", {"node-name": "top"}, "del-top"),
            ask("block-stream", {"job-id": "s2", "device": "top"}, "stream-again"),
            dismiss("s1"),
            ask("blockdev-del", {"node-name": "mid"}, "del-mid-2"),
            ask("blockdev-add", qcow2("bbase", "b-base.qcow2", backing=None), "add-bbase"),
            ask("blockdev-add", qcow2("bmid", "b-mid.qcow2", backing="bbase"), "add-bmid"),
            ask("blockdev-add", qcow2("btop", "b-top.qcow2", backing="bmid"), "add-btop"),
            ask(
                "block-commit",
                {
                    "job-id": "c1",
                    "device": "btop",
                    "top-node": "bmid",
                    "base-node": "bbase",
                    "auto-dismiss": False,
                },
                "commit",
                J("concluded", "c1"),
            ),
            ask("blockdev-del", {"node-name": "bmid"}, "del-bmid"),
            ask("blockdev-del", {"node-name": "btop"}, "del-btop"),
            ask("blockdev-del", {"node-name": "bbase"}, "del-bbase"),
            dismiss("c1"),
            ask("blockdev-del", {"node-name": "bmid"}, "del-bmid-2"),
            qn("qn"),
        ],
    ),
    jobs(
        "chain_drive_backup_sync_none_existing",
        "drive-backup sync none onto an existing image gives it the source as "
        "its backing node: a raw or a plain file target cannot have one (refused "
        "once opened), a qcow2 target takes it; sync top and full onto raw run.",
        [
            *start(),
            run("qemu-img", "create", "-f", "raw", img("t.raw"), "1M"),
            run("qemu-img", "create", "-f", "qcow2", img("t.qcow2"), "1M"),
            ask("blockdev-add", qcow2("top", "top.qcow2"), "add-top"),
            *[
                ask(
                    "drive-backup",
                    {
                        "job-id": job,
                        "device": "top",
                        "target": img(target),
                        "sync": sync,
                        "mode": "existing",
                        **({"format": fmt} if fmt else {}),
                    },
                    job,
                    *events,
                )
                for job, target, sync, fmt, events in (
                    ("b1", "t.raw", "none", None, ()),
                    ("b2", "t.raw", "none", "raw", ()),
                    ("b3", "t.qcow2", "none", "qcow2", (J("running", "b3"),)),
                )
            ],
            # (Not queried while b3 runs: qmpjobd has no copy-before-write filter node.)
            ask("query-block-jobs", None, "qb"),
            ask("job-cancel", {"id": "b3"}, "cancel-b3", J("null", "b3")),
            qn("qn"),
            *[
                ask(
                    "drive-backup",
                    {
                        "job-id": job,
                        "device": "top",
                        "target": img("t.raw"),
                        "sync": sync,
                        "mode": "existing",
                        "format": "raw",
                    },
                    job,
                    J("null", job),
                )
                for job, sync in (("b4", "top"), ("b5", "full"))
            ],
        ],
    ),
)
