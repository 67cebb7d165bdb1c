"""The soak loop of ``bench.soak``, bounded: many monitors cycling backups at once."""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak
from qmpjobd.app import App

from .support.concurrency_model import Checker


async def test_ten_clients_ten_cycles_leave_nothing_behind(app: App, sock: Path) -> None:
    result = await soak(str(sock), clients=10, cycles=10)
    assert result.errors == []
    assert result.done == 100
    assert result.leftover_jobs == []
    assert result.leftover_nodes == []
    assert Checker(app).empty() == []
