"""The state machine tables, checked pair by pair against the reference tables."""

from __future__ import annotations

import itertools

import pytest

from qmpjobd.blockjobs import BLOCK_JOB_TYPES
from qmpjobd.events import EventBus
from qmpjobd.jobs import (
    QEMU_7_2_TABLES,
    QEMU_10_0_TABLES,
    TRANSITIONS,
    VERB_TABLE,
    JobStateError,
    JobStatus,
    JobType,
    JobVerb,
    Transaction,
    set_status,
    transition_allowed,
    verb_allowed,
)
from qmpjobd.jobs.job import Job

from .support.jobs import ScriptedDriver

# Transcribed from the reference, section 1.2 (allowed targets per row).
SPEC_TRANSITIONS = """
undefined | created
created   | running, aborting, null
running   | paused, ready, waiting, aborting
paused    | running
ready     | standby, waiting, aborting
standby   | ready
waiting   | pending, aborting
pending   | aborting, concluded
aborting  | aborting, concluded
concluded | null
null      |
"""

# Transcribed from the reference, section 1.3 (the 'change' row is 8.2's).
SPEC_VERBS = """
verb \\ state | U | C | R | P | Y | S | W | D | X | E | N
cancel       | - | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | - | - | -
pause        | - | ✓ | ✓ | ✓ | ✓ | ✓ | - | - | - | - | -
resume       | - | ✓ | ✓ | ✓ | ✓ | ✓ | - | - | - | - | -
set-speed    | - | ✓ | ✓ | ✓ | ✓ | ✓ | - | - | - | - | -
complete     | - | - | - | - | ✓ | ✓ | - | - | - | - | -
finalize     | - | - | - | - | - | - | - | ✓ | - | - | -
dismiss      | - | - | - | - | - | - | - | - | - | ✓ | -
change       | - | ✓ | ✓ | ✓ | ✓ | ✓ | - | - | - | - | -
"""

LETTERS = {
    "U": "undefined",
    "C": "created",
    "R": "running",
    "P": "paused",
    "Y": "ready",
    "S": "standby",
    "W": "waiting",
    "D": "pending",
    "X": "aborting",
    "E": "concluded",
    "N": "null",
}


def spec_transitions() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in SPEC_TRANSITIONS.strip().splitlines():
        src, _, targets = line.partition("|")
        out[src.strip()] = {t.strip() for t in targets.split(",") if t.strip()}
    return out


def spec_verbs() -> dict[str, set[str]]:
    lines = SPEC_VERBS.strip().splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:]]
    out: dict[str, set[str]] = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("|")]
        out[cells[0]] = {LETTERS[h] for h, c in zip(header, cells[1:], strict=True) if c == "✓"}
    return out


def test_enums_spelled_and_ordered_like_qapi() -> None:
    assert [s.value for s in JobStatus] == [
        "undefined", "created", "running", "paused", "ready", "standby",
        "waiting", "pending", "aborting", "concluded", "null",
    ]  # fmt: skip
    assert [v.value for v in JobVerb] == [
        "cancel", "pause", "resume", "set-speed", "complete", "dismiss", "finalize", "change",
    ]  # fmt: skip
    # 7.2 has no verb change; 10.0's table is 7.2's and the change row.
    assert JobVerb.CHANGE not in QEMU_7_2_TABLES.verbs
    assert {v: QEMU_10_0_TABLES.verbs[v] for v in QEMU_7_2_TABLES.verbs} == dict(
        QEMU_7_2_TABLES.verbs
    )
    assert [t.value for t in JobType][:5] == ["commit", "stream", "mirror", "backup", "create"]
    assert {t.value for t in BLOCK_JOB_TYPES} == {"commit", "stream", "mirror", "backup"}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(JobStatus, JobStatus)), ids=lambda s: s.value
)
def test_every_transition_pair(old: JobStatus, new: JobStatus) -> None:
    expected = new.value in spec_transitions()[old.value]
    assert transition_allowed(old, new) is expected
    assert (new in TRANSITIONS[old]) is expected


@pytest.mark.parametrize(
    ("verb", "status"), list(itertools.product(JobVerb, JobStatus)), ids=lambda s: s.value
)
def test_every_verb_pair(verb: JobVerb, status: JobStatus) -> None:
    expected = status.value in spec_verbs()[verb.value]
    assert QEMU_10_0_TABLES.verb_allowed(verb, status) is expected
    if verb is JobVerb.CHANGE:
        return
    assert verb_allowed(verb, status) is expected
    assert (status in VERB_TABLE[verb]) is expected


class _Host:
    def __init__(self) -> None:
        self.bus = EventBus()
        self.events: list[tuple[str, dict[str, object]]] = []
        self.bus.subscribe(lambda e: self.events.append((e.name, dict(e.data))))
        self.changes: list[tuple[JobStatus, JobStatus]] = []
        self.transitions = TRANSITIONS
        self.listeners = ()

    def _job_status_changed(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        self.changes.append((old, new))

    def _job_activity(self) -> None:
        pass


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(JobStatus, JobStatus)), ids=lambda s: s.value
)
def test_set_status_checks_table_and_publishes(old: JobStatus, new: JobStatus) -> None:
    host = _Host()
    job = Job(
        "j1", ScriptedDriver(), host, Transaction(False), auto_finalize=True, auto_dismiss=True
    )
    job.status = old
    if new.value not in spec_transitions()[old.value]:
        with pytest.raises(JobStateError):
            set_status(job, new)
        assert job.status is old
        assert host.events == []
        return
    set_status(job, new)
    assert job.status is new
    if old is new:
        assert host.events == []  # aborting -> aborting is silent
    else:
        assert host.events == [("JOB_STATUS_CHANGE", {"status": new.value, "id": "j1"})]
        assert list(host.events[0][1]) == ["status", "id"]
    assert host.changes == [(old, new)]
