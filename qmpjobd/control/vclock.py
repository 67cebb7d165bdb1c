"""The virtual clock's driver: advance it (``x-qmpjobd-advance-clock``) and
settle the daemon (run until nothing can move without the clock).

Settled means no job is busy: every job is parked, held, sleeping on a
virtual timer, done, or not started. A job waiting for real I/O in a worker
thread is busy, so settling waits for it. Advancing fires the virtual timers
in deadline order, settling after each, so a rate-limited copy moves chunk
by chunk as it would in real time, and the same script always gives the
same transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ..clock import Clock, VirtualClock
from ..errors import QMPError
from ..jobs import JobManager

#: A job waiting for real I/O is looked at again after this (real) pause.
_IO_POLL_SECONDS = 0.0005
#: Loop passes given to callbacks that follow a change (event writes, wake-ups).
_QUIET_PASSES = 3


class ClockControl:
    def __init__(self, jobs: JobManager, clock: Clock) -> None:
        self.jobs = jobs
        self.clock = clock

    @property
    def virtual(self) -> VirtualClock | None:
        return self.clock if isinstance(self.clock, VirtualClock) else None

    async def settle(self) -> None:
        """Run until nothing can move without the clock (no-op on the system clock)."""
        if self.virtual is None:
            return
        quiet = 0
        while quiet < _QUIET_PASSES:
            await asyncio.sleep(0)
            if self._moving():
                quiet = 0
                await asyncio.sleep(_IO_POLL_SECONDS)
            else:
                quiet += 1

    def _moving(self) -> bool:
        """Some job is busy other than in a virtual sleep (a request's latency)."""
        clock = self.virtual
        busy = sum(job.busy for job in self.jobs.jobs_newest_first())
        return clock is not None and busy > clock.sleepers

    async def wait_command(self, command: Awaitable[Any]) -> Any:
        """Await a command that may wait on virtual time (a drain waiting for a
        request's latency, a guest write to a slow node): when nothing else
        can move, the clock moves on to the next timer, as the time the
        command takes."""
        clock = self.virtual
        task = asyncio.ensure_future(command)
        if clock is None:
            return await task
        while True:
            done, _ = await asyncio.wait({task}, timeout=_IO_POLL_SECONDS)
            if done:
                return task.result()
            if clock.sleepers and not self._moving():
                deadline = clock.next_deadline()
                if deadline is not None:
                    clock.set_now(deadline)
                    clock.fire_due()

    def _require(self) -> VirtualClock:
        clock = self.virtual
        if clock is None:
            raise QMPError("The clock is not virtual (start the daemon with --clock virtual)")
        return clock

    async def advance(self, ns: int) -> dict[str, Any]:
        """Move the clock ``ns`` forward, firing timers in order and settling after each.

        :raise QMPError: not a virtual clock, or ``ns`` < 0.
        """
        clock = self._require()
        if ns < 0:
            raise QMPError("Parameter 'ns' expects a non-negative value")
        target = clock.now_ns + ns
        await self.settle()
        while True:
            deadline = clock.next_deadline()
            if deadline is None or deadline > target:
                break
            clock.set_now(deadline)
            clock.fire_due()
            await self.settle()
        clock.set_now(target)
        return self.query()

    def query(self) -> dict[str, Any]:
        clock = self.virtual
        if clock is None:
            return {"virtual": False}
        us = clock.now_ns // 1000
        return {"virtual": True, "elapsed-ns": clock.now_ns, "elapsed-us": us}
