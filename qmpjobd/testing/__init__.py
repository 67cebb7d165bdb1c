"""A pytest plugin for testing management layers against qmpjobd.

Registered through the ``pytest11`` entry point (``pip install
'qmpjobd[testing]'`` brings pytest, pytest-asyncio and qemu.qmp). Loading
the plugin imports nothing but pytest; the daemon and qemu.qmp are imported
only when a test uses the ``qmpjobd`` fixture.

In a test::

    async def test_backup(qmpjobd):
        async with qmpjobd.monitor() as qmp:
            await qmp.cmd("blockdev-add", driver="null-co", **{"node-name": "src"})
            ...
            await qmp.wait_status("job0", "concluded")

The daemon runs in a thread of the test process on a private socket
(``qmpjobd.socket``), so a client under test connects to it like to QEMU.
Options: ``@pytest.mark.qmpjobd(clock="virtual", epoch=..., profile="7.2")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import Daemon, Monitor, start_daemon

__all__ = ["Daemon", "Monitor", "start_daemon"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import daemon

        return getattr(daemon, name)
    raise AttributeError(name)
