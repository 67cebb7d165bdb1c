"""Whole event sequences of the job engine (reference section 3.3, paths A-J)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator

import pytest

from qmpjobd.blockjobs import BlockJobInfo, block_job_cancel, find_block_job, query_block_jobs
from qmpjobd.errors import ErrorClass, QMPError
from qmpjobd.jobs import JobInfo, JobStatus, JobType, Transaction

from .support.jobs import Harness, ScriptedDriver, make_harness

CREATED_BLIP = ["j1:created", "j1:running", "j1:paused", "j1:running"]


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = make_harness()
    yield harness
    await harness.mgr.aclose()


def mirror(**kw: object) -> ScriptedDriver:
    return ScriptedDriver(JobType.MIRROR, kind="mirror", completable=True, **kw)  # type: ignore[arg-type]


async def started_in_drain(h: Harness, job_id: str = "j1", **kw: object) -> ScriptedDriver:
    """Create and start a backup inside a drained section (blockdev-backup)."""
    drv = ScriptedDriver()
    async with h.mgr.drained():
        h.job(job_id, drv, **kw)  # type: ignore[arg-type]
    await drv.wait_blocked(0)
    return drv


# --------------------------------------------------------------- A, B: backup


async def test_a_backup_defaults(h: Harness) -> None:
    drv = await started_in_drain(h)
    assert h.rec.take() == CREATED_BLIP
    await drv.step(("total", 100), ("progress", 60), ("progress", 40), "succeed")
    assert h.rec.seq() == ["j1:waiting", "j1:pending", "COMPLETED(j1)", "j1:concluded", "j1:null"]
    completed = h.rec.events[2]
    assert list(completed.data.items()) == [
        ("device", "j1"),
        ("len", 100),
        ("offset", 100),
        ("speed", 0),
        ("type", "backup"),
    ]
    assert drv.calls == ["run", "prepare", "commit", "clean"]
    assert h.mgr.jobs_newest_first() == []
    assert h.mgr.query_jobs() == []


async def test_b_backup_manual_finalize_and_dismiss(h: Harness) -> None:
    drv = await started_in_drain(h, auto_finalize=False, auto_dismiss=False)
    job = h.mgr.find("j1")
    await drv.step(("total", 10), ("progress", 10), "succeed")
    assert h.rec.take() == [*CREATED_BLIP, "j1:waiting", "j1:pending", "PENDING(j1)"]
    assert h.mgr.query_jobs() == [JobInfo(10, "pending", 10, "backup", "j1")]
    assert drv.calls == ["run"]
    h.mgr.finalize(job)
    assert h.rec.take() == ["COMPLETED(j1)", "j1:concluded"]
    assert h.mgr.query_jobs() == [JobInfo(10, "concluded", 10, "backup", "j1", None)]
    assert drv.calls == ["run", "prepare", "commit", "clean"]
    h.mgr.dismiss(job)
    assert h.rec.take() == ["j1:null"]
    assert h.mgr.query_jobs() == []
    # the id can be used again
    h.job("j1", start=False)
    assert h.rec.take() == ["j1:created"]


async def test_pending_event_data(h: Harness) -> None:
    drv = await started_in_drain(h, auto_finalize=False)
    await drv.step("succeed")
    pending = h.rec.events[-1]
    assert pending.name == "BLOCK_JOB_PENDING"
    assert list(pending.data.items()) == [("type", "backup"), ("id", "j1")]


# ------------------------------------------------------------- C: mirror READY


async def test_c_mirror_ready_then_complete(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step(("total", 8), ("progress", 8), "ready")
    assert h.rec.take() == ["m1:created", "m1:running", "m1:ready", "READY(m1)"]
    ready = query_block_jobs(h.mgr)[0]
    assert ready.ready and ready.status == "ready" and not ready.paused
    h.mgr.complete(job)
    assert job.should_complete
    await drv.step("tick")
    assert h.rec.seq() == ["m1:waiting", "m1:pending", "COMPLETED(m1)", "m1:concluded", "m1:null"]
    assert h.rec.events[0].data == {"status": "waiting", "id": "m1"}


async def test_c_ready_event_data(h: Harness) -> None:
    _job, drv = await h.running_job("m1", mirror(), speed=4096)
    await drv.step(("total", 8), ("progress", 3), "ready")
    ready = h.rec.events[-1]
    assert list(ready.data.items()) == [
        ("device", "m1"),
        ("len", 8),
        ("offset", 3),
        ("speed", 4096),
        ("type", "mirror"),
    ]


async def test_c_pause_in_ready_gives_standby(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    h.rec.take()
    h.mgr.pause(job)
    await drv.step("tick")
    assert h.rec.take() == ["m1:standby"]
    assert job.status is JobStatus.STANDBY and not job.busy
    v = drv.mark()
    h.mgr.resume(job)
    await drv.wait_blocked(v)
    assert h.rec.take() == ["m1:ready"]


async def test_c_complete_in_standby_waits_for_resume(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    h.mgr.pause(job)
    await drv.step("tick")
    h.rec.take()
    h.mgr.complete(job)  # accepted in STANDBY since QEMU 6.0
    assert h.rec.take() == []
    assert job.status is JobStatus.STANDBY
    v = drv.mark()
    h.mgr.resume(job)
    await drv.wait_blocked(v)
    assert h.rec.seq() == [
        "m1:ready",
        "m1:waiting",
        "m1:pending",
        "COMPLETED(m1)",
        "m1:concluded",
        "m1:null",
    ]


async def test_stream_like_job_without_ready(h: Harness) -> None:
    drv = ScriptedDriver(JobType.STREAM)
    _job, drv = await h.running_job("s1", drv)
    await drv.step("succeed")
    assert h.rec.seq() == [
        "s1:created",
        "s1:running",
        "s1:waiting",
        "s1:pending",
        "COMPLETED(s1)",
        "s1:concluded",
        "s1:null",
    ]


# ---------------------------------------------------------- D: cancel RUNNING


async def test_d_cancel_running(h: Harness) -> None:
    job, drv = await h.running_job("j1", ScriptedDriver(kind="backup"))
    await drv.step(("total", 100), ("progress", 30))
    h.rec.take()
    h.mgr.cancel(job)
    assert job.cancelled and job.force_cancel and job.is_cancelled
    await drv.step("tick")
    assert h.rec.seq() == ["j1:aborting", "CANCELLED(j1)", "j1:concluded", "j1:null"]
    cancelled = h.rec.events[1]
    assert list(cancelled.data.items()) == [
        ("device", "j1"),
        ("len", 100),
        ("offset", 30),
        ("speed", 0),
        ("type", "backup"),
    ]
    assert drv.calls == ["run", "cancel_hook(True)", "abort", "clean"]


async def test_d_block_job_cancel_soft_on_backup_forces(h: Harness) -> None:
    job, drv = await h.running_job("j1", ScriptedDriver(kind="backup"))
    h.rec.take()
    block_job_cancel(h.mgr, job, "j1", force=False)
    assert job.force_cancel
    await drv.step("tick")
    assert h.rec.seq() == ["j1:aborting", "CANCELLED(j1)", "j1:concluded", "j1:null"]


async def test_d_cancel_user_paused_resumes_first(h: Harness) -> None:
    job, drv = await h.running_job("j1", auto_dismiss=False)
    h.mgr.pause(job)
    await drv.step("tick")
    assert h.rec.take() == ["j1:created", "j1:running", "j1:paused"]
    with pytest.raises(QMPError) as exc:
        block_job_cancel(h.mgr, job, "dev-text", force=False)
    assert exc.value.desc == "The block job for device 'dev-text' is currently paused"
    assert exc.value.error_class is ErrorClass.GENERIC_ERROR
    v = drv.mark()
    h.mgr.cancel(job)
    assert h.rec.seq() == ["j1:running"]  # synchronously, before the verb returns
    assert not job.user_paused and job.pause_count == 0
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:running", "j1:aborting", "CANCELLED(j1)", "j1:concluded"]
    assert h.mgr.query_jobs() == [JobInfo(0, "concluded", 0, "backup", "j1", "Operation canceled")]
    info = query_block_jobs(h.mgr)[0]
    assert info.error == "Operation canceled" and info.status == "concluded"
    with pytest.raises(
        QMPError, match=r"^Job 'j1' in state 'concluded' cannot accept command verb 'cancel'$"
    ):
        h.mgr.cancel(job)
    h.mgr.dismiss(job)
    assert h.rec.take() == ["j1:null"]


async def test_d_force_block_job_cancel_when_paused(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.mgr.pause(job)
    await drv.step("tick")
    h.rec.take()
    v = drv.mark()
    block_job_cancel(h.mgr, job, "j1", force=True)
    await drv.wait_blocked(v)
    assert h.rec.seq() == ["j1:running", "j1:aborting", "CANCELLED(j1)", "j1:concluded", "j1:null"]


# ------------------------------------------------------------ E: cancel READY


async def test_e_soft_cancel_in_ready_completes(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    h.rec.take()
    block_job_cancel(h.mgr, job, "m1", force=False)
    assert job.cancel_requested and not job.is_cancelled
    await drv.step("tick")
    assert h.rec.seq() == ["m1:waiting", "m1:pending", "COMPLETED(m1)", "m1:concluded", "m1:null"]
    assert "error" not in h.rec.events[2].data
    assert drv.calls == ["run", "cancel_hook(False)", "prepare", "commit", "clean"]


async def test_e_soft_cancel_in_ready_manual_finalize(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror(), auto_finalize=False)
    await drv.step("ready")
    h.rec.take()
    block_job_cancel(h.mgr, job, "m1", force=False)
    await drv.step("tick")
    assert h.rec.take() == ["m1:waiting", "m1:pending", "PENDING(m1)"]
    # in PENDING a soft cancel is a force cancel: the mirror is no longer READY
    block_job_cancel(h.mgr, job, "m1", force=False)
    assert h.rec.seq() == ["m1:aborting", "CANCELLED(m1)", "m1:concluded", "m1:null"]


async def test_e_soft_cancel_then_complete_refused(h: Harness) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    block_job_cancel(h.mgr, job, "m1", force=False)
    with pytest.raises(QMPError, match=r"^The active block job 'm1' cannot be completed$"):
        h.mgr.complete(job)


@pytest.mark.parametrize("how", ["job-cancel", "force"])
async def test_e_force_cancel_in_ready(h: Harness, how: str) -> None:
    job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    h.rec.take()
    if how == "job-cancel":
        h.mgr.cancel(job)
    else:
        block_job_cancel(h.mgr, job, "m1", force=True)
    await drv.step("tick")
    assert h.rec.seq() == ["m1:aborting", "CANCELLED(m1)", "m1:concluded", "m1:null"]


async def test_e_cancel_in_standby(h: Harness) -> None:
    job, drv = await h.running_job("m6", mirror())
    await drv.step("ready")
    h.mgr.pause(job)
    await drv.step("tick")
    h.rec.take()
    with pytest.raises(QMPError, match=r"^The block job for device 'm6' is currently paused$"):
        block_job_cancel(h.mgr, job, "m6", force=False)
    v = drv.mark()
    h.mgr.cancel(job)
    await drv.wait_blocked(v)
    assert h.rec.seq() == ["m6:ready", "m6:aborting", "CANCELLED(m6)", "m6:concluded", "m6:null"]


# ---------------------------------------------------------------- F: I/O error


async def test_f_report(h: Harness) -> None:
    job, drv = await h.running_job("j1", auto_dismiss=False)
    h.rec.take()
    await drv.step(("total", 4), ("ioerr", "write", "report", errno.EIO), "eio")
    assert h.rec.take() == [
        "ERROR(j1,write,report)",
        "j1:aborting",
        "COMPLETED(j1,Input/output error)",
        "j1:concluded",
    ]
    assert h.mgr.query_jobs()[0].error == "Input/output error"
    assert query_block_jobs(h.mgr)[0].error == "Input/output error"
    assert job.io_status == "ok"


async def test_f_error_event_data(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    await drv.step(("ioerr", "read", "ignore", errno.EIO))
    err = h.rec.events[-1]
    assert err.name == "BLOCK_JOB_ERROR"
    assert list(err.data.items()) == [("device", "j1"), ("operation", "read"), ("action", "ignore")]
    assert job.status is JobStatus.RUNNING and job.io_status == "ok"


@pytest.mark.parametrize(("code", "iostatus"), [(errno.EIO, "failed"), (errno.ENOSPC, "nospace")])
async def test_f_stop(h: Harness, code: int, iostatus: str) -> None:
    job, drv = await h.running_job("j1")
    h.rec.take()
    await drv.step(("ioerr", "write", "stop", code))
    assert h.rec.take() == ["ERROR(j1,write,stop)", "j1:paused"]
    info = query_block_jobs(h.mgr)[0]
    assert (info.io_status, info.paused, info.status, info.busy) == (
        iostatus,
        True,
        "paused",
        False,
    )
    with pytest.raises(QMPError, match=r"^Job is already paused$"):
        h.mgr.pause(job)
    with pytest.raises(QMPError, match="currently paused"):
        block_job_cancel(h.mgr, job, "j1", force=False)
    v = drv.mark()
    h.mgr.resume(job)
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:running"]
    assert job.io_status == "ok" and not job.paused
    await drv.step("succeed")
    assert h.rec.take()[-1] == "j1:null"


async def test_f_stop_in_ready_gives_standby(h: Harness) -> None:
    _job, drv = await h.running_job("m1", mirror())
    await drv.step("ready")
    h.rec.take()
    await drv.step(("ioerr", "write", "stop", errno.EIO))
    assert h.rec.take() == ["ERROR(m1,write,stop)", "m1:standby"]


async def test_f_stop_keeps_first_io_status(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.mgr.pause(job)  # user pause first: stop does not pause again
    await drv.step(("ioerr", "write", "stop", errno.ENOSPC))
    assert job.pause_count == 1 and job.io_status == "nospace"
    job.report_io_error("write", "stop", errno.EIO)
    assert job.io_status == "nospace"


# ---------------------------------------------------- G: grouped transactions


async def grouped_pair(h: Harness, **kw: object) -> tuple[ScriptedDriver, ScriptedDriver]:
    txn = Transaction(grouped=True)
    da, db = ScriptedDriver(), ScriptedDriver()
    async with h.mgr.drained():
        ja = h.mgr.create("ja", da, txn=txn, **kw)  # type: ignore[arg-type]
        jb = h.mgr.create("jb", db, txn=txn, **kw)  # type: ignore[arg-type]
        h.mgr.start(ja)
        h.mgr.start(jb)
    assert txn.jobs == [jb, ja]
    await da.wait_blocked(0)
    await db.wait_blocked(0)
    assert h.rec.take() == [
        "ja:created",
        "jb:created",
        "ja:running",
        "ja:paused",
        "jb:running",
        "jb:paused",
        "ja:running",
        "jb:running",
    ]
    return da, db


async def test_g_grouped_one_fails(h: Harness) -> None:
    da, db = await grouped_pair(h)
    await db.step(("ioerr", "write", "report", errno.EIO), "eio")
    assert h.rec.take() == [
        "ERROR(jb,write,report)",
        "jb:aborting",
        "COMPLETED(jb,Input/output error)",
        "jb:concluded",
        "jb:null",
    ]
    assert h.mgr.get("ja") is not None and h.mgr.get("ja").is_cancelled  # type: ignore[union-attr]
    await da.step("tick")
    assert h.rec.take() == ["ja:aborting", "CANCELLED(ja)", "ja:concluded", "ja:null"]


async def test_g_grouped_finished_peer_is_cancelled(h: Harness) -> None:
    da, db = await grouped_pair(h)
    await da.step("succeed")
    assert h.rec.take() == ["ja:waiting"]
    await db.step("eio")
    assert h.rec.take() == [
        "jb:aborting",
        "COMPLETED(jb,Input/output error)",
        "jb:concluded",
        "jb:null",
        "ja:aborting",
        "CANCELLED(ja)",
        "ja:concluded",
        "ja:null",
    ]
    assert da.calls == ["run", "cancel_hook(True)", "abort", "clean"]


async def test_g_grouped_failure_waits_for_head(h: Harness) -> None:
    # The older job fails while the newer (list head) still runs: nothing is
    # finalized until the head has stopped.
    da, db = await grouped_pair(h)
    await da.step("eio")
    assert h.rec.take() == ["ja:aborting"]
    await db.step("tick")
    assert h.rec.take() == [
        "jb:aborting",
        "CANCELLED(jb)",
        "jb:concluded",
        "jb:null",
        "COMPLETED(ja,Input/output error)",
        "ja:concluded",
        "ja:null",
    ]


async def test_g_grouped_failure_wakes_parked_head(h: Harness) -> None:
    da, db = await grouped_pair(h)
    jb = h.mgr.find("jb")
    h.mgr.pause(jb)
    await db.step("tick")
    assert h.rec.take() == ["jb:paused"]
    v = db.mark()
    await da.step("eio")
    await db.wait_blocked(v)
    # the txn abort force-cancels the parked head, dropping its user pause
    assert h.rec.take() == [
        "ja:aborting",
        "jb:running",
        "jb:aborting",
        "CANCELLED(jb)",
        "jb:concluded",
        "jb:null",
        "COMPLETED(ja,Input/output error)",
        "ja:concluded",
        "ja:null",
    ]


async def test_g_grouped_success(h: Harness) -> None:
    da, db = await grouped_pair(h)
    await da.step("succeed")
    assert h.rec.take() == ["ja:waiting"]
    await db.step("succeed")
    assert h.rec.take() == [
        "jb:waiting",
        "jb:pending",
        "ja:pending",
        "COMPLETED(jb)",
        "jb:concluded",
        "jb:null",
        "COMPLETED(ja)",
        "ja:concluded",
        "ja:null",
    ]
    assert da.calls == db.calls == ["run", "prepare", "commit", "clean"]


async def test_g_grouped_one_manual_finalize(h: Harness) -> None:
    txn = Transaction(grouped=True)
    da, db = ScriptedDriver(), ScriptedDriver()
    ja, _ = await h.running_job("ja", da, txn=txn)
    _jb, _ = await h.running_job("jb", db, txn=txn, auto_finalize=False, auto_dismiss=False)
    h.rec.take()
    await db.step("succeed")
    await da.step("succeed")
    assert h.rec.take() == ["jb:waiting", "ja:waiting", "jb:pending", "PENDING(jb)", "ja:pending"]
    # finalizing through the member that has auto-finalize works too
    h.mgr.finalize(ja)
    assert h.rec.take() == [
        "COMPLETED(jb)",
        "jb:concluded",
        "COMPLETED(ja)",
        "ja:concluded",
        "ja:null",
    ]
    assert [j.id for j in h.mgr.jobs_newest_first()] == ["jb"]


async def test_g_cancel_waiting_member_cancels_all(h: Harness) -> None:
    da, db = await grouped_pair(h, auto_dismiss=False)
    await da.step("succeed")
    h.rec.take()
    ja = h.mgr.find("ja")
    h.mgr.cancel(ja)
    assert h.rec.take() == []  # waits for the running head
    await db.step("tick")
    assert h.rec.take() == [
        "jb:aborting",
        "CANCELLED(jb)",
        "jb:concluded",
        "ja:aborting",
        "CANCELLED(ja)",
        "ja:concluded",
    ]
    assert [i.error for i in h.mgr.query_jobs()] == ["Operation canceled"] * 2


async def test_g_cancel_pending_aborts_txn(h: Harness) -> None:
    da, db = await grouped_pair(h, auto_finalize=False)
    await da.step("succeed")
    await db.step("succeed")
    assert h.rec.take() == [
        "ja:waiting",
        "jb:waiting",
        "jb:pending",
        "PENDING(jb)",
        "ja:pending",
        "PENDING(ja)",
    ]
    h.mgr.cancel(h.mgr.find("ja"))
    assert h.rec.take() == [
        "jb:aborting",
        "CANCELLED(jb)",
        "jb:concluded",
        "jb:null",
        "ja:aborting",
        "CANCELLED(ja)",
        "ja:concluded",
        "ja:null",
    ]


async def test_individual_mode_jobs_are_independent(h: Harness) -> None:
    txn = Transaction(grouped=False)
    da, db = ScriptedDriver(), ScriptedDriver()
    ja, _ = await h.running_job("ja", da, txn=txn)
    jb, _ = await h.running_job("jb", db, txn=txn)
    assert ja.txn is not jb.txn and txn.jobs == []
    h.rec.take()
    await db.step("eio")
    assert h.rec.take() == [
        "jb:aborting",
        "COMPLETED(jb,Input/output error)",
        "jb:concluded",
        "jb:null",
    ]
    assert not ja.cancelled
    await da.step("succeed")
    assert h.rec.take()[-1] == "ja:null"


# -------------------------------------------------------- prepare failure


async def test_prepare_failure_single(h: Harness) -> None:
    _job, drv = await h.running_job("m1", mirror(prepare_error="Could not pivot"))
    h.rec.take()
    await drv.step("succeed")
    assert h.rec.seq() == [
        "m1:waiting",
        "m1:pending",
        "m1:aborting",
        "COMPLETED(m1,Could not pivot)",
        "m1:concluded",
        "m1:null",
    ]
    assert drv.calls == ["run", "prepare", "abort", "clean"]


async def test_prepare_failure_grouped_manual_finalize(h: Harness) -> None:
    txn = Transaction(grouped=True)
    da = ScriptedDriver()
    db = ScriptedDriver(prepare_error="Could not pivot")
    ja, _ = await h.running_job("ja", da, txn=txn, auto_finalize=False, auto_dismiss=False)
    _jb, _ = await h.running_job("jb", db, txn=txn, auto_finalize=False, auto_dismiss=False)
    await da.step("succeed")
    await db.step("succeed")
    h.rec.take()
    h.mgr.finalize(ja)
    assert h.rec.take() == [
        "jb:aborting",
        "COMPLETED(jb,Could not pivot)",
        "jb:concluded",
        "ja:aborting",
        "CANCELLED(ja)",
        "ja:concluded",
    ]
    assert da.calls == ["run", "cancel_hook(True)", "abort", "clean"]
    assert [(i.id, i.error) for i in h.mgr.query_jobs()] == [
        ("jb", "Could not pivot"),
        ("ja", "Operation canceled"),
    ]


# --------------------------------------------------------- H: early failures


async def test_h_negative_speed_at_creation(h: Harness) -> None:
    with pytest.raises(QMPError, match=r"^Parameter 'speed' expects a non-negative value$"):
        h.mgr.create("j1", ScriptedDriver(), speed=-1)
    assert h.rec.take() == ["j1:created", "j1:null"]
    assert h.mgr.jobs_newest_first() == []


async def test_h_cancel_created_job(h: Harness) -> None:
    job, drv = h.job("j1", start=False, auto_dismiss=False)
    h.mgr.cancel(job)
    assert h.rec.take() == ["j1:created", "j1:aborting", "j1:concluded", "j1:null"]
    assert drv.calls == ["cancel_hook(True)", "abort", "clean"]


async def test_h_grouped_created_jobs_cancelled(h: Harness) -> None:
    txn = Transaction(grouped=True)
    _ja, _ = h.job("ja", start=False, txn=txn)
    jb, _ = h.job("jb", start=False, txn=txn)
    h.rec.take()
    h.mgr.cancel(jb)
    assert h.rec.take() == [
        "jb:aborting",
        "jb:concluded",
        "jb:null",
        "ja:aborting",
        "ja:concluded",
        "ja:null",
    ]
    assert h.mgr.jobs_newest_first() == []


async def test_h_grouped_created_jobs_cancel_older_first(h: Harness) -> None:
    txn = Transaction(grouped=True)
    ja, _ = h.job("ja", start=False, txn=txn)
    _jb, _ = h.job("jb", start=False, txn=txn)
    h.rec.take()
    h.mgr.cancel(ja)
    assert h.rec.take() == [
        "ja:aborting",
        "jb:aborting",
        "jb:concluded",
        "jb:null",
        "ja:concluded",
        "ja:null",
    ]


# ------------------------------------------------------------ I: create jobs


async def test_i_create_job_success(h: Harness) -> None:
    job, drv = await h.running_job("cr1", ScriptedDriver(JobType.CREATE), auto_dismiss=False)
    await drv.step(("total", 1), ("progress", 1), "succeed")
    assert h.rec.take() == [
        "cr1:created",
        "cr1:running",
        "cr1:waiting",
        "cr1:pending",
        "cr1:concluded",
    ]
    assert h.mgr.query_jobs() == [JobInfo(1, "concluded", 1, "create", "cr1")]
    assert query_block_jobs(h.mgr) == []
    with pytest.raises(QMPError) as exc:
        find_block_job(h.mgr, "cr1")
    assert (exc.value.desc, exc.value.error_class) == (
        "Block job 'cr1' not found",
        ErrorClass.DEVICE_NOT_ACTIVE,
    )
    h.mgr.dismiss(job)
    assert h.rec.take() == ["cr1:null"]


async def test_i_create_job_failure(h: Harness) -> None:
    _job, drv = await h.running_job("cr1", ScriptedDriver(JobType.CREATE), auto_dismiss=False)
    await drv.step(("fail", "Could not create 'x': No such file or directory"))
    assert h.rec.take() == ["cr1:created", "cr1:running", "cr1:aborting", "cr1:concluded"]
    assert h.mgr.query_jobs()[0].error == "Could not create 'x': No such file or directory"


# ------------------------------------------------ J: order around the return


async def test_j_creation_events_are_synchronous(h: Harness) -> None:
    async with h.mgr.drained():
        _job, _ = h.job("j1")
        assert h.rec.seq() == ["j1:created", "j1:running", "j1:paused"]
    assert h.rec.seq() == CREATED_BLIP  # before anything else runs


# ------------------------------------------------------- pauses, drain, sleep


async def test_nested_user_pause_and_drain(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.mgr.pause(job)
    await drv.step("tick")
    h.rec.take()
    async with h.mgr.drained():
        assert job.pause_count == 2
        h.mgr.resume(job)
        assert job.pause_count == 1 and job.paused and job.status is JobStatus.PAUSED
        v = drv.mark()
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:running"]
    assert job.pause_count == 0


async def test_drain_blip_on_running_job_via_step(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.rec.take()
    release = asyncio.Event()

    async def section() -> None:
        async with h.mgr.drained():
            await release.wait()

    task = asyncio.create_task(section())
    await drv.step("tick")  # reaches its pause point and parks for the drain
    assert job.status is JobStatus.PAUSED
    v = drv.mark()
    release.set()
    await task
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:paused", "j1:running"]


async def test_pause_in_created_parks_at_start(h: Harness) -> None:
    job, drv = h.job("j1", start=False)
    h.mgr.pause(job)
    assert job.pause_count == 2
    h.mgr.start(job)
    assert h.rec.take() == ["j1:created", "j1:running", "j1:paused"]
    v = drv.mark()
    h.mgr.resume(job)
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:running"]


async def test_sleep_woken_by_pause(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.rec.take()
    await drv.step(("sleep", 3600))
    assert drv.state == "sleeping" and not job.busy
    v = drv.mark()
    h.mgr.pause(job)
    assert job.busy
    await drv.wait_blocked(v)
    assert h.rec.take() == ["j1:paused"]
    h.mgr.resume(job)
    await drv.wait_blocked(drv.mark())
    assert h.rec.take() == ["j1:running"] and drv.state == "want"


async def test_sleep_woken_by_cancel(h: Harness) -> None:
    job, drv = await h.running_job("j1")
    h.rec.take()
    await drv.step(("sleep", 3600))
    v = drv.mark()
    h.mgr.cancel(job)
    await drv.wait_blocked(v)
    assert h.rec.seq() == ["j1:aborting", "CANCELLED(j1)", "j1:concluded", "j1:null"]


async def test_sleep_woken_by_faster_speed_only(h: Harness) -> None:
    job, drv = await h.running_job("j1", speed=100)
    await drv.step(("sleep", 3600))
    h.mgr.set_speed(job, 50)  # slower: keeps sleeping
    assert not job.busy and drv.state == "sleeping"
    v = drv.mark()
    h.mgr.set_speed(job, 0)  # unlimited: wakes at once
    assert job.busy and job.speed == 0
    await drv.wait_blocked(v)
    assert drv.state == "want"


async def test_sleep_timer_expires(h: Harness) -> None:
    _job, drv = await h.running_job("j1")
    v = drv.mark()
    drv.feed(("sleep", 0))
    await drv.wait_blocked(v)  # sleeping
    await drv.wait_blocked(drv.mark())  # timer fired, wants the next step
    assert drv.state == "want"


async def test_busy_and_query_block_jobs(h: Harness) -> None:
    job, drv = await h.running_job("j1", speed=7)
    await drv.step(("total", 50), ("progress", 5))
    assert query_block_jobs(h.mgr) == [
        BlockJobInfo(
            auto_finalize=True,
            io_status="ok",
            device="j1",
            auto_dismiss=True,
            busy=True,
            len=50,
            offset=5,
            status="running",
            paused=False,
            speed=7,
            ready=False,
            type="backup",
        )
    ]
    job.progress_increase_remaining(10)
    assert (job.total_progress, job.current_progress) == (60, 5)


# ------------------------------------------------------------ quit with jobs


async def test_quit_with_jobs(h: Harness) -> None:
    _j1, d1 = await h.running_job("j1", auto_finalize=False)
    await d1.step("succeed")
    _j2, d2 = await h.running_job("j2", auto_dismiss=False)
    await d2.step("succeed")
    _j3, d3 = await h.running_job("j3")
    h.rec.take()
    task = asyncio.create_task(h.mgr.cancel_all())
    await d3.step("tick")  # the running job reaches a pause point
    await task
    assert h.rec.seq() == [
        "j3:paused",
        "j3:running",
        "j3:aborting",
        "CANCELLED(j3)",
        "j3:concluded",
        "j3:null",
        "j2:null",
        "j1:aborting",
        "CANCELLED(j1)",
        "j1:concluded",
        "j1:null",
    ]
    assert h.mgr.jobs_newest_first() == []


async def test_quit_with_paused_jobs_terminates(h: Harness) -> None:
    ja, da = await h.running_job("ja")
    h.mgr.pause(ja)
    await da.step("tick")
    jb, db = await h.running_job("jb", mirror())
    await db.step("ready")
    h.mgr.pause(jb)
    await db.step("tick")
    _jc, _ = h.job("jc", start=False)
    h.rec.take()
    await h.mgr.cancel_all()
    assert h.rec.seq() == [
        "jc:aborting",
        "jc:concluded",
        "jc:null",
        "jb:ready",
        "jb:aborting",
        "CANCELLED(jb)",
        "jb:concluded",
        "jb:null",
        "ja:running",
        "ja:aborting",
        "CANCELLED(ja)",
        "ja:concluded",
        "ja:null",
    ]


async def test_aclose_stops_tasks_silently(h: Harness) -> None:
    await h.running_job("j1")
    h.rec.take()
    await h.mgr.aclose()
    assert h.rec.seq() == [] and h.mgr.jobs_newest_first() == []


async def test_g_cancel_waiting_head_finalizes_it_first(h: Harness) -> None:
    # checked against qemu-storage-daemon 7.2: the newer member finished
    # (WAITING, list head) and is cancelled while the older one still runs
    da, db = await grouped_pair(h, auto_dismiss=False)
    await db.step("succeed")
    assert h.rec.take() == ["jb:waiting"]
    h.mgr.cancel(h.mgr.find("jb"))
    assert h.rec.take() == ["jb:aborting", "CANCELLED(jb)", "jb:concluded"]
    await da.step("tick")
    assert h.rec.take() == ["ja:aborting", "CANCELLED(ja)", "ja:concluded"]
    assert [(i.id, i.error) for i in h.mgr.query_jobs()] == [
        ("jb", "Operation canceled"),
        ("ja", "Operation canceled"),
    ]


async def test_quit_as_recorded_from_qemu(h: Harness) -> None:
    # j1 pending, j2 concluded, j3 running, j4 user-paused (checked against
    # qemu-storage-daemon 7.2)
    _, d1 = await h.running_job("j1", auto_finalize=False)
    await d1.step("succeed")
    _, d2 = await h.running_job("j2", auto_dismiss=False)
    await d2.step("succeed")
    _, d3 = await h.running_job("j3")
    j4, d4 = await h.running_job("j4")
    h.mgr.pause(j4)
    await d4.step("tick")
    h.rec.take()
    task = asyncio.create_task(h.mgr.cancel_all())
    await d3.step("tick")
    await task
    assert h.rec.seq() == [
        "j3:paused",
        "j4:running",
        "j4:aborting",
        "CANCELLED(j4)",
        "j4:concluded",
        "j4:null",
        "j3:running",
        "j3:aborting",
        "CANCELLED(j3)",
        "j3:concluded",
        "j3:null",
        "j2:null",
        "j1:aborting",
        "CANCELLED(j1)",
        "j1:concluded",
        "j1:null",
    ]
