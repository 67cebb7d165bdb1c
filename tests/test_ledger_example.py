"""examples/journal.py: a client that comes and goes reads what it missed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmpjobd.jobs import INTERRUPTED_ERROR

from .support.ledger import Client, Daemon

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "journal.py"
MiB = 1 << 20


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[Daemon]:
    d = Daemon(sock_dir / "qmp.sock", sock_dir / "state", log=sock_dir / "daemon.log")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _example(daemon: Daemon, cursor: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(daemon.sock), str(cursor)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout


def _job(c: Client, job: str, **extra: object) -> None:
    c.ok(
        "blockdev-backup",
        device="src",
        target="dst",
        sync="full",
        **{"job-id": job, **extra},
    )


def _lines(job: str, *, dismissed: bool = True) -> str:
    done = f'{{"device": "{job}", "len": {MiB}, "offset": {MiB}, "speed": 0, "type": "backup"}}'
    statuses = ["created", "running", "paused", "running", "waiting", "pending"]
    out = [f'JOB_STATUS_CHANGE {{"id": "{job}", "status": "{s}"}}' for s in statuses]
    out.append(f"BLOCK_JOB_COMPLETED {done}")
    out.append(f'JOB_STATUS_CHANGE {{"id": "{job}", "status": "concluded"}}')
    if dismissed:
        out.append(f'JOB_STATUS_CHANGE {{"id": "{job}", "status": "null"}}')
    return "".join(line + "\n" for line in out)


def test_the_journal_example_catches_up(daemon: Daemon, sock_dir: Path) -> None:
    cursor = sock_dir / "cursor.json"
    c = Client(daemon.sock)
    c.ok("blockdev-add", driver="null-co", size=MiB, **{"node-name": "src"})
    c.ok("blockdev-add", driver="null-co", size=MiB, **{"node-name": "dst"})
    _job(c, "first")
    c.wait_for("JOB_STATUS_CHANGE", id="first", status="null")
    assert _example(daemon, cursor) == _lines("first")
    # Away while a second job runs its whole life.
    _job(c, "second")
    c.wait_for("JOB_STATUS_CHANGE", id="second", status="null")
    assert _example(daemon, cursor) == _lines("second")
    assert _example(daemon, cursor) == ""
    # Away while the daemon is killed under a running job.
    _job(c, "third", speed=1, **{"auto-dismiss": False})
    c.wait_for("JOB_STATUS_CHANGE", id="third", status="paused")
    c.close()
    daemon.kill()
    daemon.start()
    out = _example(daemon, cursor)
    assert out.endswith(
        'JOB_STATUS_CHANGE {"id": "third", "status": "aborting"}\n'
        f'BLOCK_JOB_COMPLETED {{"device": "third", "error": "{INTERRUPTED_ERROR}", '
        '"len": 0, "offset": 0, "speed": 1, "type": "backup"}\n'
        'JOB_STATUS_CHANGE {"id": "third", "status": "concluded"}\n'
    )
    assert out.startswith('JOB_STATUS_CHANGE {"id": "third", "status": "created"}\n')
