"""Test support for the job engine: a scripted driver and an event recorder.

The scripted driver stands in for backup/mirror: the test feeds it steps and
waits, with futures only, until the driver is blocked again (waiting for the
next step, parked, sleeping, or finished).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qmpjobd.blockjobs import BLOCK_JOB_TYPES, BlockJobEvents
from qmpjobd.clock import ManualClock
from qmpjobd.events import Event, EventBus
from qmpjobd.jobs import (
    QEMU_7_2_TABLES,
    Job,
    JobDriver,
    JobFailure,
    JobManager,
    JobStatus,
    JobTables,
    JobType,
)

BLOCKED = frozenset({"want", "parked", "sleeping", "done"})


class ScriptedDriver(JobDriver):
    """A job driver the test steps through.

    Steps: ``("progress", n)``, ``("total", n)``, ``"ready"``, ``"succeed"``,
    ``("fail", text)``, ``"eio"``, ``("ioerr", op, action, errno)``,
    ``"tick"``, ``("sleep", seconds)``.
    ``kind`` selects the cancel hook: "force" (no hook), "mirror", "backup".
    """

    def __init__(
        self,
        job_type: JobType = JobType.BACKUP,
        *,
        kind: str = "force",
        completable: bool = False,
        prepare_error: str | None = None,
        complete_error: Exception | None = None,
    ) -> None:
        self.job_type = job_type
        self.kind = kind
        self.prepare_error = prepare_error
        self.complete_error = complete_error
        if completable:
            self.complete = self._complete
        self.calls: list[str] = []
        self.state = "init"
        self.version = 0
        self._steps: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._changed: list[asyncio.Future[None]] = []
        self.job: Job | None = None
        #: called on every driver state change (e.g. to wake a settle loop)
        self.listener: Callable[[], None] | None = None

    # --- state signalling -------------------------------------------------

    def _set(self, state: str) -> None:
        self.state = state
        self.version += 1
        changed, self._changed = self._changed, []
        for fut in changed:
            if not fut.done():
                fut.set_result(None)
        if self.listener is not None:
            self.listener()

    def settled(self) -> bool:
        """Steady: the job's run is over, it is parked/sleeping, or it waits
        for a step and none is queued."""
        job = self.job
        if job is None or job.completed or not job.busy:
            return True
        return self.state == "want" and not self._steps

    def mark(self) -> int:
        return self.version

    def blocked(self, after: int) -> bool:
        if self.version <= after or self.state not in BLOCKED:
            return False
        if self.state in ("parked", "sleeping"):
            return self.job is not None and not self.job.busy
        return True

    async def wait_blocked(self, after: int) -> None:
        while not self.blocked(after):
            fut = asyncio.get_running_loop().create_future()
            self._changed.append(fut)
            await fut

    async def step(self, *steps: Any) -> None:
        """Feed steps one by one, waiting until the driver blocks after each."""
        for s in steps:
            v = self.mark()
            self.feed(s)
            await self.wait_blocked(v)

    def feed(self, step: Any) -> None:
        self._steps.append(step)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- the driver -------------------------------------------------------

    async def _next(self) -> Any:
        while not self._steps:
            self._waiter = asyncio.get_running_loop().create_future()
            self._set("want")
            await self._waiter
            self._waiter = None
        self._set("running")
        return self._steps.popleft()

    async def run(self, job: Job) -> None:
        self.job = job
        self.calls.append("run")
        try:
            while True:
                await job.pause_point()
                if job.is_cancelled:
                    return
                if job.ready and (job.should_complete or job.cancel_requested):
                    return
                step = await self._next()
                match step:
                    case ("progress", int(n)):
                        job.progress_update(n)
                    case ("total", int(n)):
                        job.progress_set_remaining(n)
                    case ("more", int(n)):
                        job.progress_increase_remaining(n)
                    case "ready":
                        if not job.ready:
                            job.transition_to_ready()
                    case "succeed":
                        return
                    case ("fail", str(text)):
                        raise JobFailure(text)
                    case "eio":
                        raise OSError(errno.EIO, os.strerror(errno.EIO))
                    case ("ioerr", op, action, int(code)):
                        job.report_io_error(op, action, code)
                    case ("sleep", seconds):
                        self._set("sleeping")
                        await job.sleep(seconds)
                        self._set("running")
                    case "tick":
                        pass
                    case _:
                        raise AssertionError(f"bad step {step!r}")
        finally:
            self._set("done")

    async def pause(self, job: Job) -> None:
        self.job = job
        self._set("parked")

    def resume(self, job: Job) -> None:
        self._set("running")

    def user_resume(self, job: Job) -> None:
        if job.type in BLOCK_JOB_TYPES:  # as the block job drivers do
            job.io_status = "ok"

    def cancel_hook(self, job: Job, force: bool) -> bool:
        self.calls.append(f"cancel_hook({force})")
        if self.kind == "mirror":
            return force or not job.ready
        return True

    def _complete(self, job: Job) -> None:
        self.calls.append("complete")
        if self.complete_error is not None:
            raise self.complete_error

    def prepare(self, job: Job) -> None:
        self.calls.append("prepare")
        if self.prepare_error is not None:
            raise JobFailure(self.prepare_error)

    def commit(self, job: Job) -> None:
        self.calls.append("commit")

    def abort(self, job: Job) -> None:
        self.calls.append("abort")

    def clean(self, job: Job) -> None:
        self.calls.append("clean")


def compact(event: Event) -> str:
    """``j1:running`` for JOB_STATUS_CHANGE, ``COMPLETED(j1)`` for BLOCK_JOB_*."""
    if event.name == "JOB_STATUS_CHANGE":
        return f"{event.data['id']}:{event.data['status']}"
    short = event.name.removeprefix("BLOCK_JOB_")
    ident = event.data.get("device", event.data.get("id"))
    extra = ""
    if event.name == "BLOCK_JOB_ERROR":
        extra = f",{event.data['operation']},{event.data['action']}"
    elif "error" in event.data:
        extra = f",{event.data['error']}"
    return f"{short}({ident}{extra})"


@dataclass
class Recorder:
    events: list[Event] = field(default_factory=list)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def seq(self) -> list[str]:
        return [compact(e) for e in self.events]

    def take(self) -> list[str]:
        """The compact events so far, clearing the record."""
        out = self.seq()
        self.events.clear()
        return out

    async def wait(self, pred: Callable[[list[str]], bool]) -> None:
        while not pred(self.seq()):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    async def wait_for(self, item: str) -> None:
        await self.wait(lambda s: item in s)


@dataclass
class Harness:
    clock: ManualClock
    bus: EventBus
    mgr: JobManager
    rec: Recorder

    def job(
        self,
        job_id: str = "j1",
        driver: ScriptedDriver | None = None,
        *,
        start: bool = True,
        **kw: Any,
    ) -> tuple[Job, ScriptedDriver]:
        drv = driver if driver is not None else ScriptedDriver()
        job = self.mgr.create(job_id, drv, **kw)
        drv.job = job
        if start:
            self.mgr.start(job)
        return job, drv

    async def running_job(
        self, job_id: str = "j1", driver: ScriptedDriver | None = None, **kw: Any
    ) -> tuple[Job, ScriptedDriver]:
        """A started job whose driver waits for its first step."""
        v = driver.mark() if driver is not None else 0
        job, drv = self.job(job_id, driver, **kw)
        await drv.wait_blocked(v)
        return job, drv


def make_harness(tables: JobTables = QEMU_7_2_TABLES) -> Harness:
    clock = ManualClock()
    bus = EventBus(clock)
    rec = Recorder()
    bus.subscribe(rec)
    mgr = JobManager(bus, clock, tables)
    mgr.add_listener(BlockJobEvents(bus))
    return Harness(clock, bus, mgr, rec)


def status_of(job: Job) -> JobStatus:
    return job.status
