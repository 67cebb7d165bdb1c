"""Helpers for the tests of the x-qmpjobd-* extensions."""

from __future__ import annotations

import asyncio
from typing import Any

from .blockjobs import JobClient


async def wait_held(c: JobClient, job: str) -> dict[str, Any]:
    """Poll x-qmpjobd-query-holds until ``job`` waits at a hold; that hold."""
    for _ in range(2000):
        for hold in await c.ok("x-qmpjobd-query-holds"):
            if hold["job"] == job and hold["held"]:
                return dict(hold)
        await asyncio.sleep(0.005)
    raise AssertionError(f"job {job} never held")
