"""Building blocks for scenarios: requests, steps, and the job-scenario wrapper.

Shared by :mod:`tests.differential.scenarios` and
:mod:`tests.differential.scenarios_jobs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .model import GROUP_JOBS, JSON, UNSET, EventPattern, Expect, Scenario, Step

QUIET_MS = 150
CAPS = b'{"execute": "qmp_capabilities"}\n'


def cmd(execute: str, arguments: Mapping[str, JSON] | None = None, id: JSON = UNSET) -> bytes:
    req: dict[str, JSON] = {"execute": execute}
    if arguments is not None:
        req["arguments"] = dict(arguments)
    if id is not UNSET:
        req["id"] = id
    return json.dumps(req).encode() + b"\n"


def connect(conn: int = 0) -> Step:
    return Step(conn, "connect", expect={conn: Expect(messages=1)})


def send(
    *chunks: bytes,
    n: int | None = 1,
    conn: int = 0,
    reply_id: JSON = UNSET,
    quiet_ms: int = 0,
    gap_ms: int = 0,
    eof: bool = False,
    shape: tuple[str, ...] = (),
    note: str = "",
    also: Mapping[int, Expect] | None = None,
) -> Step:
    expect = {conn: Expect(messages=n, reply_id=reply_id, quiet_ms=quiet_ms, eof=eof)}
    expect.update(also or {})
    return Step(conn, "send", chunks, expect, gap_ms=gap_ms, shape=shape, note=note)


def until_quiet(*chunks: bytes, reply_id: JSON = UNSET, conn: int = 0, note: str = "") -> Step:
    """Send, then read until the reply to ``reply_id`` (if given) and silence."""
    return send(*chunks, n=None, conn=conn, reply_id=reply_id, quiet_ms=QUIET_MS, note=note)


def negotiate(conn: int = 0) -> Step:
    return send(CAPS, conn=conn)


def J(status: str, job: str = "j1") -> EventPattern:
    return EventPattern("JOB_STATUS_CHANGE", {"status": status, "id": job})


MiB = 1024 * 1024


def jobs(name: str, description: str, steps: list[Step], **kw: JSON) -> Scenario:
    return Scenario(name, description, tuple(steps), GROUP_JOBS, **kw)
