"""Verb errors: exact texts, error classes and QEMU's order of checks."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from qmpjobd.blockjobs import find_block_job, query_block_jobs
from qmpjobd.errors import ErrorClass, QMPError
from qmpjobd.jobs import (
    QEMU_10_0_TABLES,
    Job,
    JobManager,
    JobStatus,
    JobType,
    JobVerb,
    Transaction,
)

from .support.jobs import Harness, ScriptedDriver, make_harness


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    # 10.0's tables: 7.2's and the verb change.
    harness = make_harness(QEMU_10_0_TABLES)
    yield harness
    await harness.mgr.aclose()


async def job_in(h: Harness, status: JobStatus) -> Job:
    """A job (id j1) brought to ``status``; PAUSED and STANDBY are user pauses."""
    mirror = ScriptedDriver(JobType.MIRROR, kind="mirror")
    match status:
        case JobStatus.CREATED:
            job, _ = h.job("j1", start=False)
        case JobStatus.RUNNING:
            job, _ = await h.running_job("j1")
        case JobStatus.PAUSED:
            job, drv = await h.running_job("j1")
            h.mgr.pause(job)
            await drv.step("tick")
        case JobStatus.READY:
            job, drv = await h.running_job("j1", mirror)
            await drv.step("ready")
        case JobStatus.STANDBY:
            job, drv = await h.running_job("j1", mirror)
            await drv.step("ready")
            h.mgr.pause(job)
            await drv.step("tick")
        case JobStatus.WAITING:
            txn = Transaction(grouped=True)
            job, drv = await h.running_job("j1", txn=txn)
            await h.running_job("peer", txn=txn)
            await drv.step("succeed")
        case JobStatus.PENDING:
            job, drv = await h.running_job("j1", auto_finalize=False)
            await drv.step("succeed")
        case JobStatus.ABORTING:
            txn = Transaction(grouped=True)
            job, drv = await h.running_job("j1", txn=txn)
            await h.running_job("peer", txn=txn)  # newer: the list head, still running
            await drv.step("eio")
        case JobStatus.CONCLUDED:
            job, drv = await h.running_job("j1", auto_dismiss=False)
            await drv.step("succeed")
        case _:
            raise AssertionError(status)
    assert job.status is status
    return job


def verb_text(status: JobStatus, verb: str) -> str:
    return f"Job 'j1' in state '{status.value}' cannot accept command verb '{verb}'"


VISIBLE = [s for s in JobStatus if s not in (JobStatus.UNDEFINED, JobStatus.NULL)]
ALLOWED = {
    JobVerb.CANCEL: {"C", "R", "P", "Y", "S", "W", "D"},
    JobVerb.PAUSE: {"C", "R", "P", "Y", "S"},
    JobVerb.RESUME: {"C", "R", "P", "Y", "S"},
    JobVerb.SET_SPEED: {"C", "R", "P", "Y", "S"},
    JobVerb.COMPLETE: {"Y", "S"},
    JobVerb.FINALIZE: {"D"},
    JobVerb.DISMISS: {"E"},
    JobVerb.CHANGE: {"C", "R", "P", "Y", "S"},
}
LETTER = {
    JobStatus.CREATED: "C",
    JobStatus.RUNNING: "R",
    JobStatus.PAUSED: "P",
    JobStatus.READY: "Y",
    JobStatus.STANDBY: "S",
    JobStatus.WAITING: "W",
    JobStatus.PENDING: "D",
    JobStatus.ABORTING: "X",
    JobStatus.CONCLUDED: "E",
}


def expected_error(status: JobStatus, verb: JobVerb) -> str | None:
    """The error QEMU gives for the probe call of ``verb`` (None: accepted)."""
    allowed = LETTER[status] in ALLOWED[verb]
    user_paused = status in (JobStatus.PAUSED, JobStatus.STANDBY)
    if verb is JobVerb.RESUME and not user_paused:
        return "Can't resume a job that was not paused"  # checked before the table
    if not allowed:
        return verb_text(status, verb.value)
    if verb is JobVerb.PAUSE and user_paused:
        return "Job is already paused"
    if verb is JobVerb.SET_SPEED:
        return "Parameter 'speed' expects a non-negative value"  # probe uses -1
    if verb is JobVerb.COMPLETE:
        return "The active block job 'j1' cannot be completed"  # driver has no hook
    if verb is JobVerb.CHANGE:
        return "Job type does not support change"  # only mirror's driver has it
    return None


PROBES: dict[JobVerb, Callable[[JobManager, Job], None]] = {
    JobVerb.CANCEL: lambda m, j: m.cancel(j),
    JobVerb.PAUSE: lambda m, j: m.pause(j),
    JobVerb.RESUME: lambda m, j: m.resume(j),
    JobVerb.SET_SPEED: lambda m, j: m.set_speed(j, -1),
    JobVerb.COMPLETE: lambda m, j: m.complete(j),
    JobVerb.FINALIZE: lambda m, j: m.finalize(j),
    JobVerb.DISMISS: lambda m, j: m.dismiss(j),
    JobVerb.CHANGE: lambda m, j: m.change(j, "write-blocking"),
}


@pytest.mark.parametrize(
    ("status", "verb"), list(itertools.product(VISIBLE, JobVerb)), ids=lambda x: x.value
)
async def test_verb_in_every_state(h: Harness, status: JobStatus, verb: JobVerb) -> None:
    job = await job_in(h, status)
    before = h.rec.take()
    assert before  # the setup produced events
    expected = expected_error(status, verb)
    if expected is None:
        PROBES[verb](h.mgr, job)
        return
    pause_count = job.pause_count
    with pytest.raises(QMPError) as exc:
        PROBES[verb](h.mgr, job)
    assert exc.value.desc == expected
    assert exc.value.error_class is ErrorClass.GENERIC_ERROR
    # a refused verb changes nothing
    assert job.status is status and job.pause_count == pause_count
    assert h.rec.take() == []


async def test_resume_checks_pause_before_verb(h: Harness) -> None:
    job = await job_in(h, JobStatus.PENDING)
    with pytest.raises(QMPError, match=r"^Can't resume a job that was not paused$"):
        h.mgr.resume(job)
    with pytest.raises(QMPError) as exc:
        h.mgr.pause(job)
    assert exc.value.desc == "Job 'j1' in state 'pending' cannot accept command verb 'pause'"
    with pytest.raises(QMPError) as exc:
        h.mgr.set_speed(job, -5)
    assert exc.value.desc == "Job 'j1' in state 'pending' cannot accept command verb 'set-speed'"


async def test_set_speed(h: Harness) -> None:
    job = await job_in(h, JobStatus.RUNNING)
    h.mgr.set_speed(job, 1 << 20)
    assert job.speed == 1 << 20
    assert query_block_jobs(h.mgr)[0].speed == 1 << 20
    with pytest.raises(QMPError, match=r"^Parameter 'speed' expects a non-negative value$"):
        h.mgr.set_speed(job, -1)
    assert job.speed == 1 << 20
    h.mgr.set_speed(job, 0)
    assert job.speed == 0


async def test_complete_hook_error_propagates(h: Harness) -> None:
    err = QMPError("Node name 'x' not found")
    drv = ScriptedDriver(JobType.MIRROR, kind="mirror", completable=True, complete_error=err)
    job, drv = await h.running_job("j1", drv)
    await drv.step("ready")
    with pytest.raises(QMPError, match=r"^Node name 'x' not found$"):
        h.mgr.complete(job)
    assert not job.should_complete


async def test_resume_after_pause_in_created(h: Harness) -> None:
    job = await job_in(h, JobStatus.CREATED)
    h.mgr.pause(job)
    with pytest.raises(QMPError, match=r"^Job is already paused$"):
        h.mgr.pause(job)
    h.mgr.resume(job)
    assert job.pause_count == 1 and not job.user_paused


async def test_lookup_errors(h: Harness) -> None:
    with pytest.raises(QMPError) as exc:
        h.mgr.find("nope")
    assert (exc.value.desc, exc.value.error_class) == ("Job not found", ErrorClass.GENERIC_ERROR)
    with pytest.raises(QMPError) as exc:
        find_block_job(h.mgr, "nope")
    assert (exc.value.desc, exc.value.error_class) == (
        "Block job 'nope' not found",
        ErrorClass.DEVICE_NOT_ACTIVE,
    )
    job, _ = h.job("b1", start=False)
    assert h.mgr.find("b1") is job and find_block_job(h.mgr, "b1") is job


@pytest.mark.parametrize(
    ("job_id", "ok"),
    [
        ("a", True),
        ("A-b.c_9", True),
        ("", False),
        ("1a", False),
        ("-a", False),
        ("_a", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
        ("aé", False),
        ("a" * 500, True),
    ],
)
async def test_job_id_rules(h: Harness, job_id: str, ok: bool) -> None:
    if ok:
        h.job(job_id, start=False)
        assert h.rec.take() == [f"{job_id}:created"]
        with pytest.raises(QMPError) as exc:
            h.job(job_id, start=False)
        assert exc.value.desc == f"Job ID '{job_id}' already in use"
    else:
        with pytest.raises(QMPError) as exc:
            h.job(job_id, start=False)
        assert exc.value.desc == f"Invalid job ID '{job_id}'"
    assert exc.value.error_class is ErrorClass.GENERIC_ERROR
    assert h.rec.take() == []


async def test_invalid_id_checked_before_speed(h: Harness) -> None:
    with pytest.raises(QMPError, match=r"^Invalid job ID '1'$"):
        h.mgr.create("1", ScriptedDriver(), speed=-1)
    assert h.rec.take() == []


async def test_query_lists_newest_first(h: Harness) -> None:
    h.job("a", start=False)
    h.job("b", ScriptedDriver(JobType.CREATE), start=False)
    h.job("c", start=False)
    assert [i.id for i in h.mgr.query_jobs()] == ["c", "b", "a"]
    assert [i.device for i in query_block_jobs(h.mgr)] == ["c", "a"]
    assert [j.id for j in h.mgr.jobs_newest_first()] == ["c", "b", "a"]
    created = query_block_jobs(h.mgr)[0]
    assert created.paused and not created.busy and created.status == "created"
