"""QEMU's image tools in tests: they check what qmpjobd writes and build
images for it to read (the daemon itself never calls them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run(*args: str | Path) -> str:
    """Run a tool; its standard output. Fails the test on a non-zero exit."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stderr}{result.stdout}"
    return result.stdout


def check_clean(path: Path) -> None:
    """``qemu-img check`` finds neither corruption nor leaks."""
    report = json.loads(run("qemu-img", "check", "--output=json", path))
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report


def compare(path: Path, reference: Path) -> None:
    """``path`` (with its backing chain) reads like ``reference`` (``qemu-img compare``)."""
    result = subprocess.run(
        ["qemu-img", "compare", str(path), str(reference)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
