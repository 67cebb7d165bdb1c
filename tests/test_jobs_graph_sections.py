"""QEMU 10.0's drain rule in the engine: who a graph section pauses, and
when the sections of a job's own nodes count."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qmpjobd.blockjobs import BlockJobEvents
from qmpjobd.clock import ManualClock
from qmpjobd.events import EventBus
from qmpjobd.jobs import QEMU_10_0_TABLES, Job, JobDriver, JobManager, JobType

from .support.jobs import Harness, Recorder, ScriptedDriver


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    clock = ManualClock()
    bus = EventBus(clock)
    rec = Recorder()
    bus.subscribe(rec)
    mgr = JobManager(bus, clock, QEMU_10_0_TABLES, drain_all_on_graph_change=True)
    mgr.add_listener(BlockJobEvents(bus))
    yield Harness(clock, bus, mgr, rec)
    await mgr.aclose()


class _ChangesTheGraph(JobDriver):
    """A create-like job: two graph sections from its own run, one node of
    its own closing in clean (counted when it is freed)."""

    job_type = JobType.CREATE

    def __init__(self, mgr: JobManager) -> None:
        self.mgr = mgr

    async def run(self, job: Job) -> None:
        self.mgr.graph_changed(2)

    def release_nodes(self, job: Job) -> None:
        self.mgr.graph_changed(1)


async def test_a_job_is_not_paused_by_its_own_sections(h: Harness) -> None:
    await h.running_job("j1", ScriptedDriver())
    h.rec.take()
    job = h.mgr.create("c1", _ChangesTheGraph(h.mgr))
    h.mgr.start(job)
    await h.rec.wait(lambda seq: "c1:null" in seq)
    pair = ["j1:paused", "j1:running"]
    assert h.rec.take() == [
        "c1:created",
        "c1:running",
        *pair,
        *pair,
        "c1:waiting",
        "c1:pending",
        "c1:concluded",
        "c1:null",
        *pair,  # the job's node closes when it is freed
    ]
