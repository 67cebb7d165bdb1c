"""The built package works where it is installed, not only in the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import install


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    not install.can_build_offline(), reason="setuptools too old to build a wheel offline"
)
def test_wheel_from_sdist_installs_and_serves(sock_dir: Path) -> None:
    result = install.check(sock_dir, offline=True)
    assert result["received"][-1]["return"]["qemu"] == {"micro": 0, "minor": 0, "major": 10}
