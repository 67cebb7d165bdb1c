"""The soak loop of ``bench.soak``, bounded: many monitors cycling backups at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak import soak
from qmpjobd.app import App, Config

from .conftest import RawClient
from .support import RELEASE
from .support.concurrency_model import Checker


async def test_ten_clients_ten_cycles_leave_nothing_behind(app: App, sock: Path) -> None:
    result = await soak(str(sock), clients=10, cycles=10)
    assert result.errors == []
    assert result.done == 100
    assert result.leftover_jobs == []
    assert result.leftover_nodes == []
    assert Checker(app).empty() == []


async def test_a_monitor_that_stops_reading_is_dropped_and_the_rest_go_on(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One monitor stops reading while ten cycle backups: once more than
    ``max_outbound`` bytes wait for it, it is disconnected, and nobody else
    notices (no error, nothing left over, the books balance)."""
    app = App(Config(sockets=[sock_dir / "qmp.sock"], max_outbound=64 * 1024, qemu_version=RELEASE))
    await app.start()
    try:
        stalled = await RawClient.connect(sock_dir / "qmp.sock")
        stalled.writer.transport.pause_reading()
        # How much fits in the kernel's socket buffers varies: soak until it is full.
        for round_ in range(8):
            result = await soak(
                str(sock_dir / "qmp.sock"), clients=10, cycles=40, prefix=f"r{round_}"
            )
            assert result.errors == []
            assert result.done == 400
            assert result.leftover_jobs == [] and result.leftover_nodes == []
            assert Checker(app).empty() == []
            if any("unread" in r.getMessage() for r in caplog.records):
                break
        assert any("unread" in r.getMessage() for r in caplog.records)
        for _ in range(100):  # the last query's connection is closing
            if not app.server.sessions:
                break
            await asyncio.sleep(0.01)
        assert app.server.sessions == set()  # the stalled monitor too
        await stalled.close()
    finally:
        await app.shutdown()
