"""Scenarios of what QEMU 10.0 adds or changes on the job API:
``block-job-change``, ``actively-synced``, ``blockdev-set-active`` and the
nodes' ``active``. Those limited to 10.0 name it in ``profiles``; the others
run on every release (7.2 answers CommandNotFound).

Collected into :data:`tests.differential.scenarios.ALL`.
"""

from __future__ import annotations

from .model import JSON, Expect, Scenario, Step
from .scenarios_chain import file, img, overlay, run
from .scenarios_jobs import E, ask, backup_args, null, qb, setup, start_backup, start_mirror
from .steps import QUIET_MS, J, MiB, cmd, connect, jobs, negotiate

V10 = ("10.0",)
#: QEMU's mirror loop runs every 100 ms in READY: a change shows after it.
SETTLE_MS = 300


def change(rid: str, job: str = "m1", mode: str | None = None, **extra: JSON) -> Step:
    args: dict[str, JSON] = {"id": job, "type": "mirror", **extra}
    if mode is not None:
        args["copy-mode"] = mode
    return ask("block-job-change", args, rid)


def settle(rid: str) -> Step:
    """query-block-jobs after the mirror loop had time to run."""
    return Step(
        0,
        "send",
        (cmd("query-block-jobs", id=rid),),
        {0: Expect(reply_id=rid, quiet_ms=SETTLE_MS)},
    )


def _file(name: str, image: str) -> dict[str, JSON]:
    return {"node-name": name, **file(image)}


V10_SCENARIOS: tuple[Scenario, ...] = (
    jobs(
        "block_job_change_arguments",
        "block-job-change's argument checks come before the job lookup (7.2 has no such command).",
        [
            *setup(),
            ask("block-job-change", {"id": "nope"}, "no-type"),
            ask("block-job-change", {"id": "nope", "type": "mirror"}, "no-mode"),
            ask(
                "block-job-change",
                {"id": "nope", "type": "mirror", "copy-mode": "bogus"},
                "bad-mode",
            ),
            ask("block-job-change", {"id": "nope", "type": "bogus"}, "bad-type"),
            change("unknown", "nope", "background"),
            ask("block-job-change", {"id": "nope", "type": "backup", "x": 1}, "extra"),
            ask("blockdev-set-active", {"active": False, "node-name": "nope"}, "set-nope"),
        ],
    ),
    jobs(
        "v10_mirror_change_copy_mode",
        "A READY mirror switched from background to write-blocking: no-ops, "
        "actively-synced after the next pass, no way back, the discriminator "
        "not checked, a change in STANDBY.",
        [
            *setup(),
            start_mirror(**{"auto-dismiss": False}),
            qb("qb-ready"),
            change("bg-noop", mode="background"),
            change("to-wb", mode="write-blocking"),
            settle("qb-synced"),
            change("wb-noop", mode="write-blocking"),
            change("to-bg", mode="background"),
            ask("block-job-change", {"id": "m1", "type": "backup"}, "as-backup"),
            change("unknown", "nope", "background"),
            ask("job-pause", {"id": "m1"}, "pause", J("standby", "m1")),
            change("wb-standby", mode="write-blocking"),
            qb("qb-standby"),
            ask("job-resume", {"id": "m1"}, "resume", J("ready", "m1")),
            ask("job-complete", {"id": "m1"}, "complete", J("concluded", "m1")),
            qb("qb-concluded"),
            change("concluded", mode="write-blocking"),
            ask("job-dismiss", {"id": "m1"}, "dismiss", J("null", "m1")),
        ],
        profiles=V10,
    ),
    jobs(
        "v10_mirror_write_blocking_from_start",
        "A mirror started in write-blocking mode is actively synced once "
        "READY; a mirror given type backup while write-blocking is refused.",
        [
            *setup(),
            start_mirror(**{"copy-mode": "write-blocking"}),
            settle("qb-ready"),
            ask("block-job-change", {"id": "m1", "type": "backup"}, "as-backup"),
            change("to-bg", mode="background"),
            ask("job-cancel", {"id": "m1"}, "cancel", J("null", "m1")),
        ],
        profiles=V10,
    ),
    jobs(
        "v10_change_other_jobs",
        "block-job-change on jobs that are not mirrors, or not block jobs, "
        "or past the verb's states.",
        [
            *setup(),
            start_backup(**{"auto-dismiss": False}),
            change("backup-as-mirror", "j1", "write-blocking"),
            ask("block-job-change", {"id": "j1", "type": "backup"}, "backup-as-backup"),
            ask("job-cancel", {"id": "j1"}, "cancel", J("concluded")),
            change("backup-concluded", "j1", "write-blocking"),
            ask("job-dismiss", {"id": "j1"}, "dismiss", J("null")),
            start_mirror(**{"auto-finalize": False}),
            ask("job-complete", {"id": "m1"}, "complete", E("BLOCK_JOB_PENDING", "m1")),
            change("pending", mode="write-blocking"),
            qb("qb-pending"),
            ask("job-finalize", {"id": "m1"}, "finalize", J("null", "m1")),
            ask(
                "blockdev-create",
                {
                    "job-id": "cr1",
                    "options": {"driver": "file", "filename": "{tmp}/new.img", "size": 65536},
                },
                "create",
                J("concluded", "cr1"),
            ),
            change("create-job", "cr1", "write-blocking"),
            ask("job-dismiss", {"id": "cr1"}, "dismiss-cr1", J("null", "cr1")),
            ask("blockdev-backup", backup_args(), "backup-full", J("null")),
        ],
        profiles=V10,
    ),
    jobs(
        "v10_blockdev_set_active",
        "blockdev-set-active on one node, on every node, on a node under "
        "another; blockdev-add with active false; the nodes' active member.",
        [
            *setup(
                null("src"),
                {
                    "driver": "raw",
                    "node-name": "fmt",
                    "file": null("proto"),
                },
            ),
            ask("blockdev-set-active", {"active": False, "node-name": "src"}, "src-off"),
            ask("query-named-block-nodes", None, "nodes-1"),
            ask("blockdev-set-active", {"active": False, "node-name": "proto"}, "proto-off"),
            ask("blockdev-set-active", {"active": False, "node-name": "fmt"}, "fmt-off"),
            ask("query-named-block-nodes", None, "nodes-2"),
            ask("blockdev-set-active", {"active": True, "node-name": "fmt"}, "fmt-on"),
            ask("blockdev-set-active", {"active": False}, "all-off"),
            ask("query-named-block-nodes", None, "nodes-3"),
            ask("blockdev-set-active", {"active": True}, "all-on"),
            ask("blockdev-add", null("late", active=False), "add-inactive"),
            ask("query-named-block-nodes", None, "nodes-4"),
        ],
        profiles=V10,
    ),
)


def _raw_over_file(name: str) -> dict[str, JSON]:
    return {
        "driver": "raw",
        "node-name": name,
        "file": {"driver": "file", "node-name": f"{name}-file", "filename": "{tmp}/img"},
    }


DRAIN_SCENARIOS: tuple[Scenario, ...] = (
    jobs(
        "jobs_graph_changes_drain_unrelated_jobs",
        "Block graph changes while a backup and a READY mirror run on other "
        "nodes: node adds and deletes, a backup and a mirror started and "
        "finished. 7.2 pauses neither; 10.0 pauses both once per write-locked "
        "section.",
        [
            *setup(null("src"), null("tgt"), null("msrc"), null("mtgt")),
            ask(
                "blockdev-create",
                {
                    "job-id": "cr1",
                    "options": {"driver": "file", "filename": "{tmp}/img", "size": 1048576},
                },
                "create",
                J("concluded", "cr1"),
            ),
            ask("job-dismiss", {"id": "cr1"}, "dismiss-cr1", J("null", "cr1")),
            start_backup(),
            start_mirror("m1", "msrc", "mtgt"),
            ask("blockdev-add", null("n1"), "add-null"),
            ask("blockdev-add", _raw_over_file("r1"), "add-raw"),
            ask(
                "blockdev-add",
                {"driver": "blkdebug", "node-name": "d1", "image": null("d1-null")},
                "add-blkdebug",
            ),
            ask("blockdev-del", {"node-name": "r1"}, "del-raw"),
            ask("blockdev-del", {"node-name": "d1"}, "del-blkdebug"),
            ask("blockdev-add", null("a1"), "add-a1"),
            ask("blockdev-add", null("a2"), "add-a2"),
            ask(
                "blockdev-backup",
                backup_args("k1", "a1", "a2"),
                "backup-k1",
                J("null", "k1"),
            ),
            ask(
                "blockdev-mirror",
                {"job-id": "k2", "device": "a1", "target": "a2", "sync": "full"},
                "mirror-k2",
                J("ready", "k2"),
            ),
            ask("job-complete", {"id": "k2"}, "complete-k2", J("null", "k2")),
            ask(
                "blockdev-mirror",
                {"job-id": "k3", "device": "a1", "target": "a2", "sync": "full"},
                "mirror-k3",
                J("ready", "k3"),
            ),
            ask("job-cancel", {"id": "k3"}, "cancel-k3", J("null", "k3")),
            ask("blockdev-del", {"node-name": "n1"}, "del-null"),
            ask("job-cancel", {"id": "m1"}, "cancel-m1", J("null", "m1")),
            ask("job-cancel", {"id": "j1"}, "cancel-j1", J("null")),
        ],
    ),
    jobs(
        "jobs_graph_changes_drive_targets",
        "drive-backup and drive-mirror into new raw images beside an unrelated "
        "backup: 10.0 counts the sections of opening and closing the targets' "
        "nodes too.",
        [
            *setup(null("src"), null("tgt")),
            ask(
                "blockdev-create",
                {
                    "job-id": "cr1",
                    "options": {"driver": "file", "filename": "{tmp}/img", "size": 1048576},
                },
                "create",
                J("concluded", "cr1"),
            ),
            ask("job-dismiss", {"id": "cr1"}, "dismiss-cr1", J("null", "cr1")),
            start_backup(),
            ask("blockdev-add", _raw_over_file("f"), "add-raw"),
            ask(
                "drive-backup",
                {
                    "job-id": "k1",
                    "device": "f",
                    "target": "{tmp}/backup.img",
                    "sync": "full",
                    "format": "raw",
                },
                "drive-backup",
                J("null", "k1"),
            ),
            ask(
                "drive-mirror",
                {
                    "job-id": "k2",
                    "device": "f",
                    "target": "{tmp}/mirror.img",
                    "sync": "full",
                    "format": "raw",
                },
                "drive-mirror",
                J("ready", "k2"),
            ),
            ask("job-cancel", {"id": "k2"}, "cancel-k2", J("null", "k2")),
            ask("job-cancel", {"id": "j1"}, "cancel-j1", J("null")),
        ],
    ),
)


def asked(rid: str, execute: str, arguments: dict[str, JSON]) -> Step:
    """A command whose events, if any, come before its reply: wait for the
    reply, then for quiet."""
    return Step(
        0,
        "send",
        (cmd(execute, arguments, id=rid),),
        {0: Expect(reply_id=rid, quiet_ms=QUIET_MS)},
    )


BACKUP_ARGUMENTS: tuple[Scenario, ...] = (
    jobs(
        "jobs_backup_newer_arguments",
        "blockdev-backup's discard-source and x-perf min-cluster-size (QEMU "
        "9.1): unexpected in 7.2; in 10.0 taken, a cluster size not a power of "
        "2 refused.",
        [
            *setup(),
            asked("discard-source", "blockdev-backup", backup_args(**{"discard-source": True})),
            asked(
                "cluster-1000",
                "blockdev-backup",
                backup_args("j2", **{"x-perf": {"min-cluster-size": 1000}}),
            ),
            asked(
                "cluster-128k",
                "blockdev-backup",
                backup_args("j3", **{"x-perf": {"min-cluster-size": 131072}}),
            ),
            ask("query-jobs", None, "q"),
        ],
    ),
    jobs(
        "v10_backup_discard_source",
        "discard-source: a file node with discard=unmap is punched as it is "
        "copied, one without keeps its data, a raw node's implicit file child "
        "discards what raw passes down, a read-only source is refused (after "
        "the cluster size check); actual-size shows which.",
        [
            connect(0),
            negotiate(0),
            *[
                step
                for name in ("a", "b", "c", "ro")
                for step in (
                    run("qemu-img", "create", "-f", "raw", img(f"{name}.raw"), "1M"),
                    run("qemu-io", "-f", "raw", "-c", "write -P 7 0 1M", img(f"{name}.raw")),
                )
            ],
            *[run("qemu-img", "create", "-f", "raw", img(f"t{i}.raw"), "1M") for i in (1, 2, 3)],
            ask("blockdev-add", {**_file("a", "a.raw"), "discard": "unmap"}, "add-a"),
            ask("blockdev-add", _file("b", "b.raw"), "add-b"),
            ask(
                "blockdev-add",
                {"driver": "raw", "node-name": "c", "discard": "unmap", "file": file("c.raw")},
                "add-c",
            ),
            ask(
                "blockdev-add",
                {**_file("ro", "ro.raw"), "discard": "unmap", "read-only": True},
                "add-ro",
            ),
            *[ask("blockdev-add", _file(f"t{i}", f"t{i}.raw"), f"add-t{i}") for i in (1, 2, 3)],
            asked(
                "ro-cluster",
                "blockdev-backup",
                backup_args(
                    "j0", "ro", "t1", **{"discard-source": True, "x-perf": {"min-cluster-size": 3}}
                ),
            ),
            asked(
                "ro", "blockdev-backup", backup_args("j0", "ro", "t1", **{"discard-source": True})
            ),
            *[
                ask(
                    "blockdev-backup",
                    backup_args(job, src, tgt, **{"discard-source": True}),
                    job,
                    J("null", job),
                )
                for job, src, tgt in (("j1", "a", "t1"), ("j2", "b", "t2"), ("j3", "c", "t3"))
            ],
            ask("query-named-block-nodes", {"flat": True}, "qn"),
        ],
        profiles=V10,
    ),
    jobs(
        "v10_backup_min_cluster_size",
        "x-perf min-cluster-size above 64 KiB sets the copy's cluster: len "
        "counts whole clusters of it.",
        [
            *setup(null("src", MiB + 512), null("tgt", MiB + 512)),
            *[
                ask(
                    "blockdev-backup",
                    backup_args(job, **{"x-perf": {"min-cluster-size": size}}),
                    job,
                    J("null", job),
                )
                for job, size in (("j1", 1 << 20), ("j2", 1 << 16), ("j3", 4096))
            ],
        ],
        profiles=V10,
    ),
    jobs(
        "v10_backup_discard_source_qcow2",
        "discard-source on qcow2 sources with discard=unmap: the copied clusters "
        "read as zeros (zero flag, also over a backing file) and their host "
        "clusters are punched.",
        [
            connect(0),
            negotiate(0),
            run("qemu-img", "create", "-f", "qcow2", img("base.qcow2"), "1M"),
            run("qemu-io", "-c", "write -P 1 0 1M", img("base.qcow2")),
            overlay("top.qcow2", "base.qcow2"),
            run("qemu-io", "-c", "write -P 2 256k 256k", img("top.qcow2")),
            run("qemu-img", "create", "-f", "qcow2", img("solo.qcow2"), "1M"),
            run("qemu-io", "-c", "write -P 3 0 512k", img("solo.qcow2")),
            *[run("qemu-img", "create", "-f", "raw", img(f"t{i}.raw"), "1M") for i in (1, 2)],
            ask(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": "top",
                    "discard": "unmap",
                    "file": file("top.qcow2"),
                },
                "add-top",
            ),
            ask(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": "solo",
                    "discard": "unmap",
                    "file": file("solo.qcow2"),
                },
                "add-solo",
            ),
            *[ask("blockdev-add", _file(f"t{i}", f"t{i}.raw"), f"add-t{i}") for i in (1, 2)],
            ask(
                "blockdev-backup",
                backup_args("j1", "top", "t1", **{"discard-source": True}),
                "j1",
                J("null", "j1"),
            ),
            ask(
                "blockdev-backup",
                backup_args("j2", "solo", "t2", **{"discard-source": True}),
                "j2",
                J("null", "j2"),
            ),
            # What top holds now: sync top counts its own clusters, zero
            # flags included (actual-size would show the punched clusters,
            # but a file system settles it at its own pace).
            ask(
                "blockdev-backup",
                backup_args("j3", "top", "t1", sync="top", **{"auto-dismiss": False}),
                "j3",
                J("concluded", "j3"),
            ),
            ask("query-jobs", None, "q"),
        ],
        profiles=V10,
    ),
)
