"""examples/backup.py, run as a program against the daemon."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from .support.blockjobs import sha256, write_random

pytestmark = pytest.mark.timeout(20)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "backup.py"


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backup_example(sock: Path, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    write_random(src, 3 << 20)
    tgt = tmp_path / "backup.img"
    code, out, err = await run(str(sock), str(src), str(tgt))
    assert (code, err) == (0, "")
    assert "100.0%" in out
    assert out.endswith(f"backed up {3 << 20} bytes of {src} to {tgt}\n")
    assert sha256(tgt) == sha256(src)


async def test_backup_example_failure(sock: Path, tmp_path: Path) -> None:
    code, _out, err = await run(str(sock), str(tmp_path / "missing.img"), str(tmp_path / "t.img"))
    assert code == 1
    assert err == f"error: Could not open '{tmp_path}/missing.img': No such file or directory\n"
