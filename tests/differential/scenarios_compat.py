"""Scenarios for details found by comparing qmpjobd with qemu-storage-daemon
one command at a time: the source of a finished mirror stays drained until
the job is finalized, QAPI's unsigned integer types, ``query-block``, the
``json:{...}`` filename of a blkdebug node with error rules.

Collected into :data:`tests.differential.scenarios.ALL`.
"""

from __future__ import annotations

from .model import Scenario
from .scenarios_jobs import E, ask, null, q, qb, setup, start_mirror
from .steps import J, jobs

BLKDEBUG = {
    "driver": "blkdebug",
    "node-name": "dbg",
    "inject-error": [
        {"event": "read_aio", "errno": 5, "once": True},
        {"event": "write_aio", "errno": 28, "sector": 8},
    ],
    "image": null("dbg-null", 65536),
}


def _file(size: object, **extra: object) -> dict[str, object]:
    return {"driver": "file", "filename": "{tmp}/new.img", "size": size, **extra}


COMPAT: tuple[Scenario, ...] = (
    jobs(
        "jobs_mirror_pending_source_drained",
        "A mirror completed with auto-finalize false waits in PENDING with its "
        "source drained: query-block-jobs says paused until job-finalize.",
        [
            *setup(),
            start_mirror(**{"auto-finalize": False, "auto-dismiss": False}),
            qb("qb-ready"),
            ask("job-complete", {"id": "m1"}, "complete", J("pending", "m1")),
            qb("qb-pending"),
            q("q-pending"),
            ask("job-finalize", {"id": "m1"}, "fin", E("BLOCK_JOB_COMPLETED", "m1")),
            qb("qb-concluded"),
            ask("job-dismiss", {"id": "m1"}, "dismiss", J("null", "m1")),
            start_mirror("m2", **{"auto-finalize": False}),
            ask("block-job-cancel", {"device": "m2"}, "soft-cancel", J("pending", "m2")),
            qb("qb-soft-cancel-pending"),
            ask("job-cancel", {"id": "m2"}, "cancel-pending", J("null", "m2")),
        ],
    ),
    jobs(
        "jobs_unsigned_arguments",
        "QAPI size and uint32 members: which JSON values they take and the "
        "texts of those they refuse.",
        [
            *setup(),
            *[
                ask("blockdev-create", {"job-id": "c", "options": _file(size)}, f"size-{i}")
                for i, size in enumerate(["1M", 1.5, True, 18446744073709551616, None])
            ],
            ask(
                "blockdev-create",
                {"job-id": "c", "options": _file(65536, **{"extent-size-hint": "1"})},
                "hint",
            ),
            *[
                ask(
                    "blockdev-mirror",
                    {
                        "job-id": "m",
                        "device": "src",
                        "target": "tgt",
                        "sync": "full",
                        "granularity": value,
                    },
                    f"granularity-{i}",
                )
                for i, value in enumerate(["x", 8589934592, -1, 1.0])
            ],
        ],
    ),
    jobs(
        "block_query_block",
        "query-block: qemu-storage-daemon has no named block backends.",
        [
            *setup(),
            ask("query-block", None, "qb"),
            ask("query-block", {"x": 1}, "qb-extra"),
        ],
    ),
    jobs(
        "block_blkdebug_filename",
        "The json:{...} filename of a blkdebug node with two error rules: the "
        "flattened inject-error keys in QEMU's QDict order.",
        [
            *setup(BLKDEBUG),
            ask("query-named-block-nodes", None, "nodes"),
        ],
    ),
)
