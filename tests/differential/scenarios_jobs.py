"""Job scenarios: the job verbs in every reachable state, cancel, pause
nesting, speed, error policies, transactions, mirror, blockdev-create,
several monitors and quit.

Collected into :data:`tests.differential.scenarios.ALL`.

Making QEMU deterministic (each choice is checked by recording with
``--repeat``):

* a ``sync: "none"`` backup of a null-co node never copies anything: it runs
  until cancelled, and its progress stays 0;
* an image of 64 KiB is a single backup cluster, so an injected error fails
  exactly one request and gives exactly one ``BLOCK_JOB_ERROR``; with
  ``once`` the retry after ``stop`` (or ``ignore``) then succeeds;
* a job slowed by ``speed`` has copied an unknown amount when it is looked
  at: those scenarios set ``progress`` (progress numbers are replaced);
* events of different jobs are compared in one sequence per connection, so
  every scenario waits for each job's events before it starts the next job.

The created state is not reachable from outside: every job-starting command
moves the job past it before it returns.
"""

from __future__ import annotations

from .model import JSON, EventPattern, Expect, Scenario, Step
from .steps import QUIET_MS, J, MiB, cmd, connect, jobs, negotiate, send

KiB = 1024
CLUSTER = 64 * KiB  # a backup's default cluster size: one copy request


# ------------------------------------------------------------------ helpers


def ask(
    execute: str,
    arguments: dict[str, JSON] | None,
    rid: JSON,
    *events: EventPattern,
    conn: int = 0,
    watchers: tuple[int, ...] = (),
    timeout_s: float = 2.0,
    note: str = "",
) -> Step:
    """Send a command; wait for its reply and for ``events`` (also on ``watchers``)."""
    expect = {conn: Expect(reply_id=rid, events=events, timeout_s=timeout_s)}
    for w in watchers:
        expect[w] = Expect(events=events, timeout_s=timeout_s)
    return Step(conn, "send", (cmd(execute, arguments, id=rid),), expect, note=note)


def E(name: str, job: str = "j1", **data: JSON) -> EventPattern:
    """A BLOCK_JOB_* event of ``job`` (BLOCK_JOB_PENDING is keyed by id)."""
    key = "id" if name == "BLOCK_JOB_PENDING" else "device"
    return EventPattern(name, {key: job, **data})


def null(name: str, size: int = MiB, **extra: JSON) -> dict[str, JSON]:
    return {"driver": "null-co", "node-name": name, "size": size, "read-zeroes": True, **extra}


# A source that reads as data, not zeroes: a backup writes it with real writes
# (a zero area is copied with write-zeroes, which fires no write_aio event).
DATA_SRC = null("src", CLUSTER, **{"read-zeroes": False})


# The event of a write-zeroes request reaching blkdebug: a backup of a zero
# source (read-zeroes) writes nothing but zeroes.
ZERO_WRITE = "pwritev_zero"


def rule(
    event: str = "write_aio", errno: int = 5, once: bool = True, **extra: JSON
) -> dict[str, JSON]:
    return {"event": event, "errno": errno, "once": once, **extra}


def faulty(name: str, *rules: dict[str, JSON], size: int = CLUSTER) -> dict[str, JSON]:
    """raw ``name`` over blkdebug ``name-dbg`` (with ``rules``) over null-co ``name-null``."""
    return {
        "driver": "raw",
        "node-name": name,
        "file": {
            "driver": "blkdebug",
            "node-name": f"{name}-dbg",
            "inject-error": list(rules),
            "image": null(f"{name}-null", size, **{"read-zeroes": False}),
        },
    }


def setup(*nodes: dict[str, JSON], conns: int = 1) -> list[Step]:
    """Connect and negotiate ``conns`` monitors, then add ``nodes`` (default src, tgt)."""
    steps: list[Step] = []
    for k in range(conns):
        steps += [connect(k), negotiate(k)]
    for node in nodes or (null("src"), null("tgt")):
        steps.append(send(cmd("blockdev-add", node, id=f"add-{node['node-name']}")))
    return steps


def backup_args(
    job: str = "j1", src: str = "src", tgt: str = "tgt", **extra: JSON
) -> dict[str, JSON]:
    return {"job-id": job, "device": src, "target": tgt, "sync": "full", **extra}


def start_backup(job: str = "j1", src: str = "src", tgt: str = "tgt", **extra: JSON) -> Step:
    """A backup that keeps running (sync none): waits for its start events."""
    args = backup_args(job, src, tgt, **{"sync": "none", **extra})
    return ask("blockdev-backup", args, f"backup-{job}", J("paused", job), J("running", job))


def start_mirror(job: str = "m1", src: str = "src", tgt: str = "tgt", **extra: JSON) -> Step:
    """A mirror of a null-co node: READY at once."""
    args = {"job-id": job, "device": src, "target": tgt, "sync": "full", **extra}
    return ask("blockdev-mirror", args, f"mirror-{job}", J("ready", job), E("BLOCK_JOB_READY", job))


def q(rid: str, conn: int = 0) -> Step:
    return ask("query-jobs", None, rid, conn=conn)


def qb(rid: str, conn: int = 0) -> Step:
    return ask("query-block-jobs", None, rid, conn=conn)


def verbs(job: str, tag: str, *names: str) -> list[Step]:
    """Each named verb on ``job``, through the job-* or block-job-* command."""
    out = []
    for name in names:
        family, verb = name.split(":") if ":" in name else ("job", name)
        if family == "job":
            out.append(ask(f"job-{verb}", {"id": job}, f"{verb}-{tag}"))
        elif verb in ("finalize", "dismiss"):
            out.append(ask(f"block-job-{verb}", {"id": job}, f"b{verb}-{tag}"))
        elif verb == "set-speed":
            out.append(ask("block-job-set-speed", {"device": job, "speed": 1}, f"speed-{tag}"))
        else:
            out.append(ask(f"block-job-{verb}", {"device": job}, f"b{verb}-{tag}"))
    return out


ALL_VERBS = (
    "pause",
    "resume",
    "complete",
    "finalize",
    "dismiss",
    "block:pause",
    "block:resume",
    "block:complete",
    "block:finalize",
    "block:dismiss",
    "block:set-speed",
)

# A backup copies up to 1 MiB per request; with a rate limit it sleeps after
# the first one, so a 16 MiB data source (not zeroes, which would be written in
# one write-zeroes request) keeps a rate-limited backup busy.
SLOW = (null("src", 16 * MiB, **{"read-zeroes": False}), null("tgt", 16 * MiB))

CANCELLED = (J("aborting"), E("BLOCK_JOB_CANCELLED"), J("concluded"))


def cancelled(job: str) -> tuple[EventPattern, ...]:
    return (J("aborting", job), E("BLOCK_JOB_CANCELLED", job), J("concluded", job))


def done(job: str) -> tuple[EventPattern, ...]:
    return (J("pending", job), E("BLOCK_JOB_COMPLETED", job), J("concluded", job))


# ------------------------------------------------------------------ scenarios

STATES: tuple[Scenario, ...] = (
    jobs(
        "jobs_verbs_running",
        "Every verb on a RUNNING backup; set-speed valid and negative; job-cancel.",
        [
            *setup(),
            start_backup(**{"auto-dismiss": False}),
            *verbs("j1", "r", *ALL_VERBS[1:5], *ALL_VERBS[6:10]),
            ask("block-job-set-speed", {"device": "j1", "speed": 4096}, "speed"),
            ask("block-job-set-speed", {"device": "j1", "speed": -1}, "speed-neg"),
            q("q-running"),
            qb("qb-running"),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED),
            qb("qb-concluded"),
            *verbs("j1", "c", *ALL_VERBS[:4], "block:pause", "block:set-speed"),
            ask("job-cancel", {"id": "j1"}, "cancel-c"),
            ask("block-job-cancel", {"device": "j1"}, "bcancel-c"),
            ask("job-dismiss", {"id": "j1"}, "dismiss", J("null")),
        ],
    ),
    jobs(
        "jobs_verbs_paused",
        "Every verb on a user-paused backup; nested pause is refused; resume twice.",
        [
            *setup(),
            start_backup(),
            ask("job-pause", {"id": "j1"}, "pause", J("paused")),
            *verbs("j1", "p", *(v for v in ALL_VERBS if not v.endswith("resume"))),
            q("q-paused"),
            qb("qb-paused"),
            ask("block-job-resume", {"device": "j1"}, "bresume", J("running")),
            *verbs("j1", "again", "resume", "block:resume"),
            ask("block-job-pause", {"device": "j1"}, "bpause", J("paused")),
            ask("job-pause", {"id": "j1"}, "pause-nested"),
            ask("job-resume", {"id": "j1"}, "resume", J("running")),
            ask(
                "block-job-cancel", {"device": "j1", "force": True}, "cancel", *CANCELLED, J("null")
            ),
            q("q-empty"),
        ],
    ),
    jobs(
        "jobs_verbs_ready",
        "Every verb but complete on a READY mirror, queries, then job-complete.",
        [
            *setup(),
            start_mirror(**{"auto-dismiss": False}),
            *verbs("m1", "y", "resume", "finalize", "dismiss", "block:resume", "block:finalize"),
            *verbs("m1", "y2", "block:dismiss", "block:set-speed"),
            q("q-ready"),
            qb("qb-ready"),
            ask(
                "job-complete",
                {"id": "m1"},
                "complete",
                J("waiting", "m1"),
                *done("m1"),
            ),
            qb("qb-concluded"),
            q("q-concluded"),
            ask("job-complete", {"id": "m1"}, "complete-c"),
            ask("block-job-dismiss", {"id": "m1"}, "dismiss", J("null", "m1")),
        ],
    ),
    jobs(
        "jobs_verbs_standby",
        "Every verb on a mirror paused in READY (STANDBY); soft cancel refused; job-cancel.",
        [
            *setup(),
            start_mirror(),
            ask("block-job-pause", {"device": "m1"}, "pause", J("standby", "m1")),
            *verbs("m1", "s", "pause", "finalize", "dismiss", "block:pause", "block:finalize"),
            *verbs("m1", "s2", "block:dismiss", "block:set-speed"),
            ask("block-job-cancel", {"device": "m1"}, "soft"),
            q("q-standby"),
            qb("qb-standby"),
            ask(
                "job-cancel",
                {"id": "m1"},
                "cancel",
                J("ready", "m1"),
                *cancelled("m1"),
                J("null", "m1"),
            ),
        ],
    ),
    jobs(
        "jobs_verbs_waiting",
        "Grouped transaction: the finished member waits; every verb on it; cancelling it "
        "aborts both.",
        [
            *setup(null("src"), null("tgt"), null("src2"), null("tgt2")),
            ask(
                "transaction",
                {
                    "actions": [
                        {"type": "blockdev-backup", "data": backup_args("j1")},
                        {
                            "type": "blockdev-backup",
                            "data": backup_args("j2", "src2", "tgt2", sync="none"),
                        },
                    ],
                    "properties": {"completion-mode": "grouped"},
                },
                "txn",
                J("waiting"),
            ),
            *verbs("j1", "w", *ALL_VERBS),
            q("q-waiting"),
            qb("qb-waiting"),
            ask(
                "job-cancel",
                {"id": "j1"},
                "cancel",
                J("null", "j2"),
                J("null"),
                note="both members abort, newest first",
            ),
        ],
    ),
    jobs(
        "jobs_verbs_pending_cancel",
        "auto-finalize false: verbs in PENDING, then job-cancel there aborts the job.",
        [
            *setup(),
            ask(
                "blockdev-backup",
                backup_args(**{"auto-finalize": False, "auto-dismiss": False}),
                "backup",
                E("BLOCK_JOB_PENDING"),
            ),
            *verbs("j1", "pd", "block:pause", "block:resume", "block:complete", "dismiss"),
            ask("block-job-set-speed", {"device": "j1", "speed": -1}, "speed-neg"),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED),
            q("q-concluded"),
            qb("qb-concluded"),
            ask("job-dismiss", {"id": "j1"}, "dismiss", J("null")),
        ],
    ),
    jobs(
        "jobs_verbs_concluded_after_error",
        "A failed backup (auto-dismiss false) stays CONCLUDED with its error; verbs; the "
        "id is free again after dismiss.",
        [
            *setup(null("src", CLUSTER), faulty("tgt", rule(ZERO_WRITE))),
            ask(
                "blockdev-backup",
                backup_args(**{"auto-dismiss": False}),
                "backup",
                J("concluded"),
            ),
            *verbs("j1", "c", *ALL_VERBS[:4], *ALL_VERBS[5:9], "block:set-speed"),
            ask("block-job-cancel", {"device": "j1", "force": True}, "bcancel"),
            q("q-concluded"),
            qb("qb-concluded"),
            ask("blockdev-backup", backup_args(), "backup-dup"),
            ask("block-job-dismiss", {"id": "j1"}, "dismiss", J("null")),
            ask("blockdev-backup", backup_args(), "backup-again", J("null")),
        ],
    ),
)


CANCEL: tuple[Scenario, ...] = (
    jobs(
        "jobs_cancel_running_soft_is_forced",
        "block-job-cancel without force on a running backup cancels it (backup always forces).",
        [
            *setup(),
            start_backup(),
            ask("block-job-cancel", {"device": "j1"}, "cancel", *CANCELLED, J("null")),
            q("q"),
        ],
    ),
    jobs(
        "jobs_cancel_running_force_keeps_concluded",
        "block-job-cancel force on a running backup with auto-dismiss false.",
        [
            *setup(),
            start_backup(**{"auto-dismiss": False}),
            ask("block-job-cancel", {"device": "j1", "force": True}, "cancel", *CANCELLED),
            q("q"),
            ask("block-job-dismiss", {"id": "j1"}, "dismiss", J("null")),
        ],
    ),
    jobs(
        "jobs_mirror_ready_soft_cancel",
        "Soft cancel of a READY mirror completes it without error.",
        [
            *setup(),
            start_mirror(),
            ask(
                "block-job-cancel",
                {"device": "m1"},
                "cancel",
                J("waiting", "m1"),
                *done("m1"),
                J("null", "m1"),
            ),
            q("q"),
        ],
    ),
    jobs(
        "jobs_mirror_ready_soft_cancel_manual_finalize",
        "Soft cancel of a READY mirror with auto-finalize/auto-dismiss false.",
        [
            *setup(),
            start_mirror(**{"auto-finalize": False, "auto-dismiss": False}),
            ask(
                "block-job-cancel",
                {"device": "m1"},
                "cancel",
                J("pending", "m1"),
                E("BLOCK_JOB_PENDING", "m1"),
            ),
            q("q-pending"),
            ask("job-complete", {"id": "m1"}, "complete-p"),
            ask(
                "block-job-finalize",
                {"id": "m1"},
                "fin",
                E("BLOCK_JOB_COMPLETED", "m1"),
                J("concluded", "m1"),
            ),
            q("q-concluded"),
            ask("job-dismiss", {"id": "m1"}, "dismiss", J("null", "m1")),
        ],
    ),
    jobs(
        "jobs_mirror_ready_force_cancel",
        "block-job-cancel force on a READY mirror abandons it.",
        [
            *setup(),
            start_mirror(**{"auto-dismiss": False}),
            ask("block-job-cancel", {"device": "m1", "force": True}, "cancel", *cancelled("m1")),
            q("q"),
            qb("qb"),
            ask("job-dismiss", {"id": "m1"}, "dismiss", J("null", "m1")),
        ],
    ),
    jobs(
        "jobs_mirror_ready_job_cancel",
        "job-cancel on a READY mirror is a force cancel.",
        [
            *setup(),
            start_mirror(),
            ask("job-cancel", {"id": "m1"}, "cancel", *cancelled("m1"), J("null", "m1")),
            q("q"),
        ],
    ),
    jobs(
        "jobs_mirror_standby_complete_then_resume",
        "job-complete on a STANDBY mirror is accepted; it completes after job-resume.",
        [
            *setup(),
            start_mirror(),
            ask("job-pause", {"id": "m1"}, "pause", J("standby", "m1")),
            ask("job-complete", {"id": "m1"}, "complete"),
            q("q-standby"),
            ask("job-complete", {"id": "m1"}, "complete-again"),
            ask(
                "job-resume",
                {"id": "m1"},
                "resume",
                J("ready", "m1"),
                J("waiting", "m1"),
                *done("m1"),
                J("null", "m1"),
            ),
        ],
    ),
    jobs(
        "jobs_mirror_standby_resume_then_complete",
        "Pause and resume a READY mirror (no second BLOCK_JOB_READY), then complete.",
        [
            *setup(),
            start_mirror(),
            ask("block-job-pause", {"device": "m1"}, "pause", J("standby", "m1")),
            ask("block-job-resume", {"device": "m1"}, "resume", J("ready", "m1")),
            qb("qb"),
            ask(
                "block-job-complete",
                {"device": "m1"},
                "complete",
                J("waiting", "m1"),
                *done("m1"),
                J("null", "m1"),
            ),
        ],
    ),
    jobs(
        "jobs_mirror_errors",
        "blockdev-mirror argument and state errors, then a mirror in the way of a backup.",
        [
            *setup(null("src"), null("tgt"), null("small", CLUSTER)),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "src", "target": "src", "sync": "full"},
                "self",
            ),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "src", "target": "tgt", "sync": "incremental"},
                "sync",
            ),
            ask(
                "blockdev-mirror",
                {
                    "job-id": "m1",
                    "device": "src",
                    "target": "tgt",
                    "sync": "full",
                    "granularity": 1000,
                },
                "gran",
            ),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "src", "target": "tgt", "sync": "full", "speed": -5},
                "speed",
                J("null", "m1"),
            ),
            start_mirror(),
            ask("blockdev-backup", backup_args("j2"), "busy"),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "src", "target": "small", "sync": "full"},
                "dup",
            ),
            ask("job-cancel", {"id": "m1"}, "cancel", *cancelled("m1"), J("null", "m1")),
        ],
    ),
)


PAUSE_SPEED: tuple[Scenario, ...] = (
    jobs(
        "jobs_pause_nested_with_drain",
        "A new blockdev-backup drains: a running job blips paused/running; a user-paused "
        "job stays paused; a failing backup command drains too.",
        [
            *setup(null("src"), null("tgt"), null("src2"), null("tgt2"), null("small", CLUSTER)),
            start_backup(),
            ask(
                "blockdev-backup",
                backup_args("j2", "src2", "tgt2", sync="none"),
                "backup-j2",
                J("paused", "j2"),
                J("running", "j2"),
            ),
            ask("job-pause", {"id": "j1"}, "pause", J("paused")),
            ask("blockdev-backup", backup_args("j3", "src2", "small", sync="none"), "bad-size"),
            q("q"),
            ask("block-job-pause", {"device": "j1"}, "bpause-nested"),
            ask("job-resume", {"id": "j1"}, "resume", J("running")),
            ask("job-cancel", {"id": "j2"}, "cancel-j2", *cancelled("j2"), J("null", "j2")),
            ask("job-cancel", {"id": "j1"}, "cancel-j1", *CANCELLED, J("null")),
        ],
    ),
    jobs(
        "jobs_set_speed_rate_limited",
        "A backup limited by speed runs slowly; set-speed checks; speed 0 lets it finish.",
        [
            *setup(*SLOW),
            ask(
                "blockdev-backup",
                backup_args(speed=CLUSTER),
                "backup",
                J("paused"),
                J("running"),
            ),
            qb("qb-slow"),
            ask("block-job-set-speed", {"device": "j1", "speed": -1}, "speed-neg"),
            ask("block-job-set-speed", {"device": "j1", "speed": 2 * CLUSTER}, "speed-2"),
            qb("qb-faster"),
            ask(
                "block-job-set-speed",
                {"device": "j1", "speed": 0},
                "speed-0",
                *done("j1"),
                J("null"),
            ),
            ask("block-job-set-speed", {"device": "j1", "speed": 0}, "speed-gone"),
        ],
        progress=True,
    ),
    jobs(
        "jobs_rate_limited_cancel",
        "A rate-limited backup is paused, resumed and cancelled part-way.",
        [
            *setup(*SLOW),
            ask("blockdev-backup", backup_args(speed=1), "backup", J("paused"), J("running")),
            ask("job-pause", {"id": "j1"}, "pause", J("paused")),
            q("q-paused"),
            ask("job-resume", {"id": "j1"}, "resume", J("running")),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED, J("null")),
        ],
        progress=True,
    ),
    jobs(
        "jobs_latency_backup",
        "A backup of a null-co node with latency-ns: slower, same events.",
        [
            *setup(null("src", **{"latency-ns": 20_000_000}), null("tgt")),
            ask("blockdev-backup", backup_args(), "backup", *done("j1"), J("null")),
        ],
    ),
    jobs(
        "jobs_backup_start_errors",
        "blockdev-backup refusals: job ids, nodes, sizes, negative speed.",
        [
            *setup(null("src"), null("tgt"), null("small", CLUSTER)),
            ask("blockdev-backup", {"device": "src", "target": "tgt", "sync": "full"}, "no-id"),
            ask("blockdev-backup", backup_args("1bad"), "bad-id"),
            ask("blockdev-backup", backup_args(src="nope"), "no-src"),
            ask("blockdev-backup", backup_args(tgt="nope"), "no-tgt"),
            ask("blockdev-backup", backup_args(tgt="src"), "same"),
            ask("blockdev-backup", backup_args(tgt="small"), "size"),
            ask("blockdev-backup", backup_args(sync="bitmap"), "bitmap"),
            ask("blockdev-backup", backup_args(speed=-1), "neg-speed", J("null")),
            start_backup(),
            ask("blockdev-backup", backup_args(), "dup-id"),
            ask("blockdev-del", {"node-name": "tgt"}, "del-busy"),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED, J("null")),
        ],
    ),
)


def _error_scenario(
    name: str,
    description: str,
    policy_key: str,
    policy: str,
    errno: int,
    then: list[Step],
    *first: EventPattern,
    source: bool = False,
    auto_dismiss: bool = True,
    xfail_reason: str = "",
) -> Scenario:
    """A one-cluster backup whose target (or source) fails one request."""
    if source:
        nodes = (faulty("src", rule("read_aio", errno)), null("tgt", CLUSTER))
    else:
        nodes = (null("src", CLUSTER), faulty("tgt", rule(ZERO_WRITE, errno)))
    args = backup_args(**{policy_key: policy})
    if not auto_dismiss:
        args["auto-dismiss"] = False
    return jobs(
        name,
        description,
        [*setup(*nodes), ask("blockdev-backup", args, "backup", *first), *then],
        xfail_reason=xfail_reason,
    )


ERRORS: tuple[Scenario, ...] = (
    _error_scenario(
        "jobs_error_target_report",
        "A target write fails (EIO), on-target-error report: the job fails.",
        "on-target-error",
        "report",
        5,
        [q("q"), qb("qb"), ask("job-dismiss", {"id": "j1"}, "dismiss", J("null"))],
        E("BLOCK_JOB_ERROR", action="report"),
        E("BLOCK_JOB_COMPLETED"),
        J("concluded"),
        auto_dismiss=False,
    ),
    jobs(
        "jobs_error_data_source_target_write",
        "A null-co source without read-zeroes is copied with data writes (QEMU reports "
        "it neither as data nor as zeroes), so a write_aio rule on the target fires.",
        [
            *setup(DATA_SRC, faulty("tgt", rule())),
            ask(
                "blockdev-backup",
                backup_args(),
                "backup",
                E("BLOCK_JOB_ERROR", action="report"),
                E("BLOCK_JOB_COMPLETED", error="Input/output error"),
                J("null"),
            ),
        ],
    ),
    _error_scenario(
        "jobs_error_target_stop_resume",
        "on-target-error stop: paused with io-status failed; pause refused; resume retries.",
        "on-target-error",
        "stop",
        5,
        [
            qb("qb-stopped"),
            q("q-stopped"),
            ask("job-pause", {"id": "j1"}, "pause"),
            ask("block-job-cancel", {"device": "j1"}, "soft"),
            ask("job-resume", {"id": "j1"}, "resume", J("running"), *done("j1"), J("null")),
        ],
        E("BLOCK_JOB_ERROR", action="stop"),
        J("paused"),
    ),
    _error_scenario(
        "jobs_error_target_stop_cancel",
        "on-target-error stop, then job-cancel of the stopped job.",
        "on-target-error",
        "stop",
        5,
        [ask("job-cancel", {"id": "j1"}, "cancel", J("running"), *CANCELLED, J("null"))],
        E("BLOCK_JOB_ERROR", action="stop"),
        J("paused"),
    ),
    _error_scenario(
        "jobs_error_target_enospc_nospace",
        "on-target-error enospc with ENOSPC: stops with io-status nospace; block-job-resume.",
        "on-target-error",
        "enospc",
        28,
        [
            qb("qb-stopped"),
            ask(
                "block-job-resume", {"device": "j1"}, "resume", J("running"), *done("j1"), J("null")
            ),
        ],
        E("BLOCK_JOB_ERROR", action="stop"),
        J("paused"),
    ),
    _error_scenario(
        "jobs_error_target_enospc_eio",
        "on-target-error enospc with EIO: reported, the job fails.",
        "on-target-error",
        "enospc",
        5,
        [],
        E("BLOCK_JOB_ERROR", action="report"),
        E("BLOCK_JOB_COMPLETED"),
        J("null"),
    ),
    _error_scenario(
        "jobs_error_target_stop_enospc",
        "on-target-error stop with ENOSPC: io-status nospace.",
        "on-target-error",
        "stop",
        28,
        [
            qb("qb-stopped"),
            ask("job-resume", {"id": "j1"}, "resume", J("running"), *done("j1"), J("null")),
        ],
        E("BLOCK_JOB_ERROR", action="stop"),
        J("paused"),
    ),
    _error_scenario(
        "jobs_error_target_ignore",
        "on-target-error ignore: one ignored error (once), the job completes.",
        "on-target-error",
        "ignore",
        5,
        [],
        E("BLOCK_JOB_ERROR", action="ignore"),
        *done("j1"),
        J("null"),
    ),
    _error_scenario(
        "jobs_error_source_report",
        "A source read fails, on-source-error report (the target policy does not apply).",
        "on-target-error",
        "stop",
        5,
        [q("q"), ask("job-dismiss", {"id": "j1"}, "dismiss", J("null"))],
        E("BLOCK_JOB_ERROR", action="report", operation="read"),
        E("BLOCK_JOB_COMPLETED"),
        J("concluded"),
        source=True,
        auto_dismiss=False,
    ),
    _error_scenario(
        "jobs_error_source_stop_resume",
        "on-source-error stop on a read error, then resume.",
        "on-source-error",
        "stop",
        5,
        [
            qb("qb-stopped"),
            ask("job-resume", {"id": "j1"}, "resume", J("running"), *done("j1"), J("null")),
        ],
        E("BLOCK_JOB_ERROR", action="stop", operation="read"),
        J("paused"),
        source=True,
    ),
    _error_scenario(
        "jobs_error_source_enospc",
        "on-source-error enospc with ENOSPC on a read.",
        "on-source-error",
        "enospc",
        28,
        [
            qb("qb-stopped"),
            ask("job-cancel", {"id": "j1"}, "cancel", J("running"), *CANCELLED, J("null")),
        ],
        E("BLOCK_JOB_ERROR", action="stop", operation="read"),
        J("paused"),
        source=True,
    ),
    jobs(
        "jobs_mirror_faulty_target_unallocated_source",
        "A mirror of an unallocated null-co node to a target whose data writes fail: "
        "nothing is written, so READY and complete without error.",
        [
            *setup(DATA_SRC, faulty("tgt", rule())),
            start_mirror(),
            ask(
                "job-complete",
                {"id": "m1"},
                "complete",
                J("waiting", "m1"),
                *done("m1"),
                J("null", "m1"),
            ),
        ],
    ),
)


def _txn(*actions: dict[str, JSON], grouped: bool = False) -> dict[str, JSON]:
    out: dict[str, JSON] = {"actions": list(actions)}
    if grouped:
        out["properties"] = {"completion-mode": "grouped"}
    return out


def _b(job: str, src: str, tgt: str, **extra: JSON) -> dict[str, JSON]:
    return {"type": "blockdev-backup", "data": backup_args(job, src, tgt, **extra)}


FOUR = (null("src"), null("tgt"), null("src2"), null("tgt2"))
# Two members of a transaction run at the same time; QEMU resumes the newest
# first after the start drain, so with equal work j2 finishes first.  That is
# scheduling, not a rule: a slower target for j2 fixes the order (j1 first).
FOUR_J2_SLOW = (null("src"), null("tgt"), null("src2"), null("tgt2", **{"latency-ns": 50_000_000}))

TRANSACTIONS: tuple[Scenario, ...] = (
    jobs(
        "jobs_txn_grouped_success",
        "Grouped transaction of two full backups: both finish together.",
        [
            *setup(*FOUR_J2_SLOW),
            ask(
                "transaction",
                _txn(_b("j1", "src", "tgt"), _b("j2", "src2", "tgt2"), grouped=True),
                "txn",
                J("null", "j2"),
                J("null"),
            ),
            q("q"),
        ],
    ),
    jobs(
        "jobs_txn_grouped_failure",
        "Grouped transaction: one member's target fails, the running peer is cancelled.",
        [
            *setup(
                null("src"),
                null("tgt"),
                null("src2", CLUSTER),
                faulty("tgt2", rule(ZERO_WRITE)),
            ),
            ask(
                "transaction",
                _txn(
                    _b("j1", "src", "tgt", sync="none", **{"auto-dismiss": False}),
                    _b("j2", "src2", "tgt2", **{"auto-dismiss": False}),
                    grouped=True,
                ),
                "txn",
                J("concluded"),
            ),
            q("q"),
            ask("job-dismiss", {"id": "j1"}, "dis-1", J("null")),
            ask("job-dismiss", {"id": "j2"}, "dis-2", J("null", "j2")),
        ],
    ),
    jobs(
        "jobs_txn_individual_failure",
        "Individual transaction: one member fails, the other keeps running.",
        [
            *setup(
                null("src"),
                null("tgt"),
                null("src2", CLUSTER),
                faulty("tgt2", rule(ZERO_WRITE)),
            ),
            ask(
                "transaction",
                _txn(_b("j1", "src", "tgt", sync="none"), _b("j2", "src2", "tgt2")),
                "txn",
                J("null", "j2"),
            ),
            q("q"),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED, J("null")),
        ],
    ),
    jobs(
        "jobs_txn_manual_finalize_grouped",
        "Grouped: one member with auto-finalize false holds both in PENDING; finalize "
        "through the other member.",
        [
            *setup(*FOUR_J2_SLOW),
            ask(
                "transaction",
                _txn(
                    _b("j1", "src", "tgt", **{"auto-finalize": False}),
                    _b("j2", "src2", "tgt2"),
                    grouped=True,
                ),
                "txn",
                E("BLOCK_JOB_PENDING"),
            ),
            q("q-pending"),
            ask("job-finalize", {"id": "j2"}, "fin", J("null", "j2"), J("null")),
        ],
    ),
    jobs(
        "jobs_txn_abort_action",
        "Transactions with an abort action: no job, one job (individual and grouped); "
        "an empty action list; an unknown action type.",
        [
            *setup(),
            ask("transaction", _txn({"type": "abort", "data": {}}), "abort-only"),
            ask(
                "transaction",
                _txn(_b("j1", "src", "tgt"), {"type": "abort", "data": {}}),
                "abort-after-backup",
                J("null"),
            ),
            # 7.2 creates and aborts j1 before the error; 10.0 refuses grouped
            # mode up front, without events: wait for the reply and quiet.
            Step(
                0,
                "send",
                (
                    cmd(
                        "transaction",
                        _txn(_b("j1", "src", "tgt"), {"type": "abort", "data": {}}, grouped=True),
                        id="abort-grouped",
                    ),
                ),
                {0: Expect(reply_id="abort-grouped", quiet_ms=QUIET_MS)},
            ),
            ask("transaction", _txn(), "empty"),
            ask("transaction", _txn({"type": "nope", "data": {}}), "unknown"),
            q("q"),
        ],
    ),
    jobs(
        "jobs_txn_bad_second_action",
        "A transaction whose second backup is invalid: the first job is rolled back.",
        [
            *setup(*FOUR),
            ask(
                "transaction",
                _txn(_b("j1", "src", "tgt"), _b("j2", "src2", "nope")),
                "txn",
                J("null"),
            ),
            ask(
                "transaction",
                _txn(_b("j1", "src", "tgt"), _b("j1", "src2", "tgt2")),
                "txn-dup",
                J("null"),
            ),
            q("q"),
        ],
    ),
)


def _create(job: str, filename: str, size: int = MiB) -> dict[str, JSON]:
    return {"job-id": job, "options": {"driver": "file", "filename": filename, "size": size}}


CREATE: tuple[Scenario, ...] = (
    jobs(
        "jobs_create_file",
        "blockdev-create of a file: events, queries, block-job-dismiss refused, "
        "job-dismiss; then a backup into the new file.",
        [
            *setup(),
            ask(
                "blockdev-create", _create("cr1", "{tmp}/new.img"), "create", J("concluded", "cr1")
            ),
            q("q-concluded"),
            qb("qb"),
            ask("block-job-dismiss", {"id": "cr1"}, "bdismiss"),
            ask("job-dismiss", {"id": "cr1"}, "dismiss", J("null", "cr1")),
            ask(
                "blockdev-add",
                {"driver": "file", "node-name": "img", "filename": "{tmp}/new.img"},
                "add-img",
            ),
            ask("blockdev-backup", backup_args(tgt="img"), "backup", J("null")),
        ],
    ),
    jobs(
        "jobs_create_file_fails",
        "blockdev-create into a missing folder fails in the job; argument errors.",
        [
            *setup(),
            ask(
                "blockdev-create",
                _create("cr1", "{tmp}/missing/new.img"),
                "create",
                J("concluded", "cr1"),
            ),
            q("q"),
            ask("job-dismiss", {"id": "cr1"}, "dismiss", J("null", "cr1")),
            ask("blockdev-create", {"options": _create("x", "{tmp}/a.img")["options"]}, "no-id"),
            ask(
                "blockdev-create",
                {"job-id": "cr2", "options": {"driver": "null-co", "size": MiB}},
                "null-co",
            ),
            ask(
                "blockdev-create",
                _create("cr3", "{tmp}/a.img", size=-1),
                "size-neg",
                J("concluded", "cr3"),
            ),
            q("q-size"),
        ],
    ),
    jobs(
        "jobs_drive_backup_and_mirror_files",
        "drive-backup and drive-mirror to new raw files.",
        [
            *setup(),
            ask(
                "drive-backup",
                {
                    "job-id": "j1",
                    "device": "src",
                    "target": "{tmp}/b.img",
                    "format": "raw",
                    "sync": "full",
                },
                "dbackup",
                J("null"),
            ),
            ask(
                "drive-mirror",
                {
                    "job-id": "m1",
                    "device": "src",
                    "target": "{tmp}/m.img",
                    "format": "raw",
                    "sync": "full",
                },
                "dmirror",
                J("ready", "m1"),
                E("BLOCK_JOB_READY", "m1"),
            ),
            ask("job-complete", {"id": "m1"}, "complete", J("null", "m1")),
        ],
    ),
)


MONITORS: tuple[Scenario, ...] = (
    jobs(
        "jobs_two_monitors_mirror",
        "Two monitors drive one mirror in turn and see the same events.",
        [
            *setup(conns=2),
            ask(
                "blockdev-mirror",
                {"job-id": "m1", "device": "src", "target": "tgt", "sync": "full"},
                "mirror",
                J("ready", "m1"),
                watchers=(1,),
            ),
            ask("job-pause", {"id": "m1"}, "pause", J("standby", "m1"), conn=1, watchers=(0,)),
            ask("job-pause", {"id": "m1"}, "pause-again", conn=0),
            ask("job-resume", {"id": "m1"}, "resume", J("ready", "m1"), conn=0, watchers=(1,)),
            q("q", conn=1),
            ask("job-complete", {"id": "m1"}, "complete", J("null", "m1"), conn=1, watchers=(0,)),
        ],
        connections=2,
        same_events=(0, 1),
    ),
    jobs(
        "jobs_monitor_disconnect_then_dismiss",
        "The monitor that started a job leaves while it runs; the job goes on; another "
        "monitor cancels it; a new monitor finds the concluded job and dismisses it.",
        [
            *setup(conns=2),
            ask(
                "blockdev-backup",
                backup_args(sync="none", **{"auto-dismiss": False}),
                "backup",
                J("paused"),
                J("running"),
                watchers=(1,),
            ),
            Step(0, "close"),
            q("q-running", conn=1),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED, conn=1),
            connect(2),
            negotiate(2),
            q("q-concluded", conn=2),
            ask("job-dismiss", {"id": "j1"}, "dismiss", J("null"), conn=2, watchers=(1,)),
            q("q-empty", conn=1),
        ],
        connections=3,
    ),
    jobs(
        "jobs_negotiating_monitor_gets_no_events",
        "A monitor still in negotiation mode gets no job events; after negotiating it does.",
        [
            connect(0),
            negotiate(0),
            connect(1),
            send(cmd("blockdev-add", null("src"), id="add-src")),
            send(cmd("blockdev-add", null("tgt"), id="add-tgt")),
            start_backup(),
            negotiate(1),
            ask("job-cancel", {"id": "j1"}, "cancel", *CANCELLED, J("null"), watchers=(1,)),
        ],
        connections=2,
    ),
)


def _quit(*events: EventPattern) -> Step:
    return Step(
        0,
        "send",
        (cmd("quit", id="quit"),),
        {0: Expect(reply_id="quit", events=events, eof=True, timeout_s=3.0)},
    )


QUIT: tuple[Scenario, ...] = (
    jobs(
        "jobs_quit_with_jobs",
        "quit with a running, a paused, a pending and a concluded backup, and a READY "
        "mirror: every job is cancelled or dismissed, newest first.",
        [
            *setup(
                null("s1"),
                null("t1"),
                null("s2"),
                null("t2"),
                null("s3"),
                null("t3"),
                null("s4"),
                null("t4"),
                null("s5"),
                null("t5"),
            ),
            start_backup("j1", "s1", "t1"),
            start_backup("j2", "s2", "t2"),
            ask("job-pause", {"id": "j2"}, "pause", J("paused", "j2")),
            ask(
                "blockdev-backup",
                backup_args("j3", "s3", "t3", **{"auto-finalize": False}),
                "backup-j3",
                E("BLOCK_JOB_PENDING", "j3"),
            ),
            ask(
                "blockdev-backup",
                backup_args("j4", "s4", "t4", **{"auto-dismiss": False}),
                "backup-j4",
                J("concluded", "j4"),
            ),
            start_mirror("m5", "s5", "t5"),
            q("q"),
            _quit(J("null", "j1")),
        ],
        progress=True,
    ),
)


MORE_JOBS: tuple[Scenario, ...] = (
    STATES + CANCEL + PAUSE_SPEED + ERRORS + TRANSACTIONS + CREATE + MONITORS + QUIT
)
