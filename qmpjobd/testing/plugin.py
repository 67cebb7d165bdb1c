"""The pytest side of :mod:`qmpjobd.testing`: the ``qmpjobd`` fixture and marker.

Imports nothing but pytest and the standard library until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .daemon import Daemon


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "qmpjobd(clock='system'|'virtual', epoch=SECONDS, profile=VERSION):"
        " options of the qmpjobd fixture's daemon",
    )


@pytest.fixture
def qmpjobd(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A qmpjobd daemon on a private socket, for this test only.

    ``qmpjobd.socket`` is its path; ``qmpjobd.monitor()`` connects a helper
    (on qemu.qmp) that runs commands, waits for job statuses and checks
    event sequences.
    """
    from .daemon import start_daemon

    marker = request.node.get_closest_marker("qmpjobd")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    with start_daemon(**options) as daemon:
        yield daemon
