"""A stateful property test of the job engine against a small reference model.

Random verbs, internal pauses, driver progress, successes and failures, over
single jobs and grouped transactions. After every step the loop is run until
every job is steady, and the invariants are checked: only legal transitions,
no lost job, pause counts as the model predicts, BLOCK_JOB_* events in their
place, transactions finishing as one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qmpjobd.blockjobs import block_job_cancel, is_block_job
from qmpjobd.errors import QMPError
from qmpjobd.jobs import Job, JobStatus, JobType, Transaction

from .support.jobs import Harness, ScriptedDriver, make_harness
from .test_jobs_tables import spec_transitions, spec_verbs

SPEC_STT = spec_transitions()
SPEC_VERBS = spec_verbs()
VERBS = ["pause", "resume", "cancel", "block-cancel", "complete", "finalize", "dismiss", "speed"]
STEPS = ["tick", "progress", "ready", "succeed", "eio", "fail", "ioerr-report", "ioerr-ignore"]


@dataclass
class Model:
    job: Job
    driver: ScriptedDriver
    completable: bool
    grouped: bool
    user_paused: bool = False
    internal: int = 0
    started: bool = False
    gone: bool = False

    def pause_count(self) -> int:
        return int(self.user_paused) + self.internal + (0 if self.started else 1)


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.h: Harness = make_harness()
        self.models: list[Model] = []
        self.counter = 0
        self.errors = _ErrorLog()
        logging.getLogger("qmpjobd").addHandler(self.errors)

    # ------------------------------------------------------------- helpers

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(asyncio.wait_for(coro, 5))

    def settle(self) -> None:
        mgr = self.h.mgr

        def steady() -> bool:
            return all(m.driver.settled() for m in self.models if not m.gone)

        self.run(mgr._wait_for(steady))
        for m in self.models:
            m.gone = m.job.status is JobStatus.NULL
            job = m.job
            if m.user_paused and job.txn.aborting and job.cancelled and not job.user_paused:
                # an aborting transaction force-cancels its members, which
                # drops their user pause like a cancel verb does
                m.user_paused = False

    def new_job(self, kind: str, txn: Transaction | None, af: bool, ad: bool) -> Model:
        self.counter += 1
        job_id = f"j{self.counter}"
        if kind == "mirror":
            drv = ScriptedDriver(JobType.MIRROR, kind="mirror", completable=True)
        elif kind == "create":
            drv = ScriptedDriver(JobType.CREATE)
        else:
            drv = ScriptedDriver(JobType.BACKUP, kind="backup")
        drv.listener = self.h.mgr._job_activity
        job = self.h.mgr.create(job_id, drv, txn=txn, auto_finalize=af, auto_dismiss=ad)
        drv.job = job
        model = Model(job, drv, completable=kind == "mirror", grouped=txn is not None)
        self.models.append(model)
        return model

    def start(self, m: Model) -> None:
        self.loop.run_until_complete(self._start(m))

    async def _start(self, m: Model) -> None:
        self.h.mgr.start(m.job)
        m.started = True

    def live(self) -> list[Model]:
        return [m for m in self.models if not m.gone]

    def pick(self, index: int) -> Model | None:
        live = self.live()
        return live[index % len(live)] if live else None

    # --------------------------------------------------------------- rules

    @rule(
        kind=st.sampled_from(["backup", "mirror", "create"]),
        af=st.booleans(),
        ad=st.booleans(),
        start=st.booleans(),
    )
    def create_single(self, kind: str, af: bool, ad: bool, start: bool) -> None:
        if kind == "create":
            af, ad = True, False
        m = self.new_job(kind, None, af, ad)
        if start:
            self.start(m)
        self.settle()

    @rule(
        kinds=st.lists(st.sampled_from(["backup", "mirror"]), min_size=2, max_size=3),
        af=st.lists(st.booleans(), min_size=3, max_size=3),
        ad=st.booleans(),
        start=st.booleans(),
    )
    def create_grouped(self, kinds: list[str], af: list[bool], ad: bool, start: bool) -> None:
        txn = Transaction(grouped=True)
        members = [self.new_job(k, txn, af[i], ad) for i, k in enumerate(kinds)]
        if start:
            for m in members:
                self.start(m)
        self.settle()

    @precondition(lambda self: any(not m.started and not m.gone for m in self.models))
    @rule(index=st.integers(0, 50))
    def start_created(self, index: int) -> None:
        waiting = [m for m in self.models if not m.started and not m.gone]
        m = waiting[index % len(waiting)]
        if m.job.status is JobStatus.CREATED:
            self.start(m)
        self.settle()

    @precondition(lambda self: bool(self.live()))
    @rule(index=st.integers(0, 50), verb=st.sampled_from(VERBS), flag=st.booleans())
    def verb(self, index: int, verb: str, flag: bool) -> None:
        m = self.pick(index)
        assert m is not None
        job, mgr = m.job, self.h.mgr
        expected = self.expected_error(m, verb, flag)
        calls: dict[str, Callable[[], None]] = {
            "pause": lambda: mgr.pause(job),
            "resume": lambda: mgr.resume(job),
            "cancel": lambda: mgr.cancel(job),
            "block-cancel": lambda: block_job_cancel(mgr, job, job.id, force=flag),
            "complete": lambda: mgr.complete(job),
            "finalize": lambda: mgr.finalize(job),
            "dismiss": lambda: mgr.dismiss(job),
            "speed": lambda: mgr.set_speed(job, 100 if flag else -1),
        }
        status = job.status
        try:
            self.loop.run_until_complete(_call(calls[verb]))
        except QMPError as exc:
            assert exc.desc == expected, (verb, status, exc.desc, expected)
        else:
            assert expected is None, (verb, status, expected)
            if verb == "pause":
                m.user_paused = True
            elif verb in ("resume", "cancel", "block-cancel"):
                m.user_paused = False
        self.settle()

    def expected_error(self, m: Model, verb: str, flag: bool) -> str | None:
        job = m.job
        status = job.status.value

        def table(v: str) -> str | None:
            if status in SPEC_VERBS[v]:
                return None
            return f"Job '{job.id}' in state '{status}' cannot accept command verb '{v}'"

        match verb:
            case "pause":
                return table("pause") or ("Job is already paused" if m.user_paused else None)
            case "resume":
                if not m.user_paused or m.pause_count() <= 0:
                    return "Can't resume a job that was not paused"
                return table("resume")
            case "cancel":
                return table("cancel")
            case "block-cancel":
                if m.user_paused and not flag:
                    return f"The block job for device '{job.id}' is currently paused"
                return table("cancel")
            case "complete":
                err = table("complete")
                if err is None and (job.cancelled or not m.completable):
                    err = f"The active block job '{job.id}' cannot be completed"
                return err
            case "finalize":
                return table("finalize")
            case "dismiss":
                return table("dismiss")
            case "speed":
                err = table("set-speed")
                if err is None and not flag:
                    err = "Parameter 'speed' expects a non-negative value"
                return err
        raise AssertionError(verb)

    @precondition(lambda self: any(m.started and not m.job.completed for m in self.live()))
    @rule(index=st.integers(0, 50), step=st.sampled_from(STEPS))
    def driver_step(self, index: int, step: str) -> None:
        running = [m for m in self.live() if m.started and not m.job.completed]
        m = running[index % len(running)]
        feed: Any = {
            "progress": ("progress", 1),
            "fail": ("fail", "scripted failure"),
            "ioerr-report": ("ioerr", "write", "report", 5),
            "ioerr-ignore": ("ioerr", "read", "ignore", 5),
        }.get(step, step)
        if step == "ready" and m.job.type is not JobType.MIRROR:
            feed = "tick"
        m.driver.feed(feed)
        self.settle()

    @precondition(lambda self: bool(self.live()))
    @rule(index=st.integers(0, 50), up=st.booleans())
    def internal_pause(self, index: int, up: bool) -> None:
        m = self.pick(index)
        assert m is not None
        if up:
            self.loop.run_until_complete(_call(m.job.request_pause))
            m.internal += 1
        elif m.internal > 0:
            self.loop.run_until_complete(_call(m.job.drop_pause))
            m.internal -= 1
        self.settle()

    # ---------------------------------------------------------- invariants

    @invariant()
    def no_errors_logged(self) -> None:
        assert [r.getMessage() for r in self.errors.records] == []

    @invariant()
    def legal_paths_and_no_lost_job(self) -> None:
        history: dict[str, list[str]] = {}
        for ev in self.h.rec.events:
            if ev.name == "JOB_STATUS_CHANGE":
                assert list(ev.data) == ["status", "id"]
                history.setdefault(ev.data["id"], []).append(ev.data["status"])
        registry = {j.id for j in self.h.mgr.jobs_newest_first()}
        for m in self.models:
            path = history[m.job.id]
            assert path[0] == "created"
            for a, b in itertools.pairwise(path):
                assert a != b and b in SPEC_STT[a], (m.job.id, path)
            assert path[-1] == m.job.status.value
            assert (m.job.id in registry) == (path[-1] != "null")
        assert registry <= {m.job.id for m in self.models}

    @invariant()
    def pause_counts(self) -> None:
        for m in self.live():
            assert m.job.user_paused == m.user_paused, m.job
            assert m.job.pause_count == m.pause_count(), m.job
            if m.job.status in (JobStatus.PAUSED, JobStatus.STANDBY):
                assert m.job.pause_count > 0

    @invariant()
    def block_events_in_place(self) -> None:
        events = self.h.rec.events
        by_id = {m.job.id: m for m in self.models}
        for i, ev in enumerate(events):
            if ev.name == "JOB_STATUS_CHANGE" and ev.data["status"] == "concluded":
                m = by_id[ev.data["id"]]
                prev = events[i - 1]
                if m.started and is_block_job(m.job):
                    expected = (
                        "BLOCK_JOB_CANCELLED" if m.job.force_cancel else "BLOCK_JOB_COMPLETED"
                    )
                    assert prev.name == expected and prev.data["device"] == m.job.id
                else:
                    assert (
                        not prev.name.startswith("BLOCK_JOB_")
                        or prev.data.get("device", prev.data.get("id")) != m.job.id
                    )
            if ev.name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                assert by_id[ev.data["device"]].started

    @invariant()
    def transactions_finish_as_one(self) -> None:
        history: dict[str, list[str]] = {}
        for ev in self.h.rec.events:
            if ev.name == "JOB_STATUS_CHANGE":
                history.setdefault(ev.data["id"], []).append(ev.data["status"])
        groups: dict[int, list[Model]] = {}
        for m in self.models:
            if m.grouped:
                groups.setdefault(id(m.job.txn), []).append(m)
        for members in groups.values():
            concluded = [m for m in members if "concluded" in history[m.job.id]]
            if concluded:
                kinds = {"aborting" in history[m.job.id] for m in concluded}
                assert len(kinds) == 1, [history[m.job.id] for m in members]
            for m in members:
                if "pending" in history[m.job.id]:
                    # nobody reaches PENDING while a peer still runs
                    assert all(p.job.completed for p in members)

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.h.mgr.aclose())
        finally:
            self.loop.close()
            logging.getLogger("qmpjobd").removeHandler(self.errors)


async def _call(fn: Callable[[], None]) -> None:
    fn()


JobMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobMachine = JobMachine.TestCase
