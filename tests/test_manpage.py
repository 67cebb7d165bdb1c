"""qmpjobd(8): generated from the parser --help prints, shipped, renderable."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from qmpjobd import manpage
from qmpjobd.cli import build_parser

ROOT = Path(__file__).parent.parent


def test_shipped_page_is_what_the_parser_renders() -> None:
    # After changing an option: python -m qmpjobd.manpage --write
    assert manpage.PAGE.read_text() == manpage.render()


def test_page_is_packaged_and_installed_as_a_man_page() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "man/qmpjobd.8" in config["package-data"]["qmpjobd"]
    assert config["data-files"]["share/man/man8"] == ["qmpjobd/man/qmpjobd.8"]


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_every_option() -> None:
    proc = subprocess.run(
        ["man", "-l", str(manpage.PAGE)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "MANPAGER": "cat"},
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    text = proc.stdout
    assert text.startswith("QMPJOBD(8)")
    assert "qmpjobd - A QMP job daemon: QEMU's job API on Unix sockets." in text
    for action in build_parser()._actions:
        for name in action.option_strings:
            assert name in text
    for section in ("SYNOPSIS", "OPTIONS", "SIGNALS", "SYSTEMD", "EXIT STATUS"):
        assert f"\n{section}\n" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_page_has_no_roff_warnings() -> None:
    proc = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(manpage.PAGE)], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr) == (0, "")
