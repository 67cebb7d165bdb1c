"""--state-dir: what survives a restart, the lock, and the event journal that a
reconnecting client reads from its cursor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.clock import ManualClock
from qmpjobd.events import Event, EventBus
from qmpjobd.jobs import INTERRUPTED_ERROR
from qmpjobd.ledger import Ledger, Snapshot

from .support.ledger import Client, Daemon, brief, cursor

MiB = 1 << 20
ZERO = {"seconds": 0, "microseconds": 0}


@pytest.fixture
def daemons(sock_dir: Path) -> Iterator[list[Daemon]]:
    """Daemons made by the test; each is killed at the end if still running."""
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.stop()


def _daemon(made: list[Daemon], sock_dir: Path, state: bool, *extra: str) -> Daemon:
    daemon = Daemon(
        sock_dir / "qmp.sock",
        sock_dir / "state" if state else None,
        *extra,
        log=sock_dir / "daemon.log",
    )
    made.append(daemon)
    return daemon


def _add_null(c: Client, name: str, size: int = MiB) -> None:
    c.ok("blockdev-add", driver="null-co", size=size, **{"node-name": name})


def _backup(c: Client, job: str, **extra: Any) -> None:
    c.ok(
        "blockdev-backup",
        device="src",
        target="dst",
        sync="full",
        **{"job-id": job, "auto-dismiss": False, **extra},
    )


def test_bus_timestamps_strictly_increase_and_resume_after_a_cursor() -> None:
    clock = ManualClock(1_700_000_000.0)
    bus = EventBus(clock)
    stamps = [bus.publish("E", {}).timestamp for _ in range(3)]
    assert stamps == [(1_700_000_000, 0), (1_700_000_000, 1), (1_700_000_000, 2)]
    clock.advance(0.5)
    assert bus.publish("E", {}).timestamp == (1_700_000_000, 500_000)
    bus.resume_after((1_700_000_009, 999_999))
    assert bus.publish("E", {}).timestamp == (1_700_000_010, 0)
    assert bus.last_timestamp == (1_700_000_010, 0)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_jobs_survive_a_restart_concluded(daemons: list[Daemon], sock_dir: Path, how: str) -> None:
    daemon = _daemon(daemons, sock_dir, True)
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "src")
    _add_null(c, "dst")
    _backup(c, "done")
    c.wait_for("JOB_STATUS_CHANGE", id="done", status="concluded")
    # Rate-limited to a crawl: still running when the daemon stops.
    _backup(c, "slow", speed=1)
    paused = c.wait_for("JOB_STATUS_CHANGE", id="slow", status="paused")
    start = c.events.index(paused)
    last = c.wait_for("JOB_STATUS_CHANGE", start, id="slow", status="running")
    jobs_before = c.ok("query-jobs")
    block_jobs_before = c.ok("query-block-jobs")
    c.close()
    daemon.kill(signal.Signals[how])

    daemon.start()
    c = Client(daemon.sock)
    slow = {
        "current-progress": 0,
        "status": "concluded",
        "total-progress": 0,
        "type": "backup",
        "id": "slow",
        "error": INTERRUPTED_ERROR,
    }
    assert c.ok("query-jobs") == [slow, jobs_before[1]]
    rows = c.ok("query-block-jobs")
    assert rows[1] == block_jobs_before[1]
    assert rows[0] == {
        "auto-finalize": True,
        "io-status": "ok",
        "device": "slow",
        "auto-dismiss": False,
        "busy": False,
        "len": 0,
        "offset": 0,
        "status": "concluded",
        "paused": False,
        "speed": 1,
        "ready": False,
        "type": "backup",
        "error": INTERRUPTED_ERROR,
    }
    assert [n["node-name"] for n in c.ok("query-named-block-nodes")] == ["dst", "src"]
    # The journal tells the ending as QEMU tells a failed job's.
    read = c.ok("x-qmpjobd-query-events", since=cursor(last))
    assert read["gap"] is False
    assert brief(read["events"]) == [
        ("slow", "aborting"),
        (
            "BLOCK_JOB_COMPLETED",
            {
                "device": "slow",
                "len": 0,
                "offset": 0,
                "speed": 1,
                "type": "backup",
                "error": INTERRUPTED_ERROR,
            },
        ),
        ("slow", "concluded"),
    ]
    stamps = [(e["timestamp"]["seconds"], e["timestamp"]["microseconds"]) for e in read["events"]]
    assert stamps == sorted(set(stamps))
    assert stamps[0] > (last["timestamp"]["seconds"], last["timestamp"]["microseconds"])
    # Dismissed as usual, and gone for good.
    c.ok("job-dismiss", id="slow")
    c.ok("block-job-dismiss", id="done")
    assert brief(c.events) == [("slow", "null"), ("done", "null")]
    c.close()
    daemon.kill()
    daemon.start()
    c = Client(daemon.sock)
    assert c.ok("query-jobs") == []
    assert [n["node-name"] for n in c.ok("query-named-block-nodes")] == ["dst", "src"]
    c.close()


def test_a_node_that_cannot_be_reopened_is_logged_and_left_out(
    daemons: list[Daemon], sock_dir: Path
) -> None:
    image = sock_dir / "disk.img"
    image.write_bytes(b"\0" * MiB)
    daemon = _daemon(daemons, sock_dir, True)
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "first")
    c.ok("blockdev-add", driver="file", filename=str(image), **{"node-name": "disk"})
    c.ok("blockdev-add", driver="raw", file="disk", **{"node-name": "fmt"})
    _add_null(c, "last")
    c.close()
    daemon.kill()
    image.unlink()
    daemon.start()
    c = Client(daemon.sock)
    assert [n["node-name"] for n in c.ok("query-named-block-nodes")] == ["last", "first"]
    c.close()
    lines = [line.split(": ", 2)[1:] for line in daemon.log_text().splitlines()]
    assert [
        "error",
        f"state directory: node 'disk' cannot be reopened (Could not open '{image}': "
        "No such file or directory); it is dropped",
    ] in lines
    assert [
        "error",
        "state directory: node 'fmt' cannot be reopened (Cannot find device='disk' "
        "nor node-name='disk'); it is dropped",
    ] in lines


def test_a_command_line_node_wins_over_a_recorded_one(
    daemons: list[Daemon], sock_dir: Path
) -> None:
    daemon = _daemon(daemons, sock_dir, True)
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "disk0")
    _add_null(c, "other")
    c.close()
    daemon.kill()
    daemon = _daemon(daemons, sock_dir, True, "--blockdev", "null-co,node-name=disk0,size=2097152")
    daemon.start()
    c = Client(daemon.sock)
    nodes = {n["node-name"]: n["image"]["virtual-size"] for n in c.ok("query-named-block-nodes")}
    assert nodes == {"disk0": 2 * MiB, "other": MiB}
    c.close()
    assert (
        "warning: state directory: node 'disk0' is given on the command line; "
        "the recorded one is dropped"
    ) in daemon.log_text()


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(
    daemons: list[Daemon], sock_dir: Path
) -> None:
    daemon = _daemon(daemons, sock_dir, True)
    daemon.start()
    state = sock_dir / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert daemon.proc is not None
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "qmpjobd",
            "--socket",
            str(sock_dir / "other.sock"),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == (
        f"qmpjobd: --state-dir {state}: in use by another qmpjobd (pid {daemon.proc.pid})\n"
    )
    assert not (sock_dir / "other.sock").exists()


def test_without_a_state_dir_nothing_is_written(daemons: list[Daemon], sock_dir: Path) -> None:
    before = sorted(os.listdir(sock_dir))
    daemon = _daemon(daemons, sock_dir, False)
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "src")
    _add_null(c, "dst")
    _backup(c, "j")
    c.wait_for("JOB_STATUS_CHANGE", id="j", status="concluded")
    c.close()
    daemon.stop()
    assert sorted(os.listdir(sock_dir)) == sorted([*before, "daemon.log"])


@pytest.mark.parametrize("state", [True, False], ids=["state-dir", "in-memory"])
def test_a_client_gone_during_a_job_reads_what_it_missed(
    daemons: list[Daemon], sock_dir: Path, state: bool
) -> None:
    daemon = _daemon(daemons, sock_dir, state)
    daemon.start()
    watcher = Client(daemon.sock)
    leaver = Client(daemon.sock)
    _add_null(leaver, "src")
    _add_null(leaver, "dst")
    _backup(leaver, "first", **{"auto-dismiss": True})
    seen = leaver.wait_for("JOB_STATUS_CHANGE", id="first", status="null")
    leaver.close()
    # The whole life of a job, with nobody but the watcher listening.
    _backup(watcher, "second", **{"auto-finalize": False})
    watcher.wait_for("JOB_STATUS_CHANGE", id="second", status="pending")
    watcher.ok("job-finalize", id="second")
    watcher.wait_for("JOB_STATUS_CHANGE", id="second", status="concluded")
    watcher.ok("job-dismiss", id="second")
    watcher.wait_for("JOB_STATUS_CHANGE", id="second", status="null")

    back = Client(daemon.sock)
    read = back.ok("x-qmpjobd-query-events", since=cursor(seen))
    after = watcher.events[watcher.events.index(seen) + 1 :]
    assert read == {"events": after, "gap": False}
    assert brief(after) == [
        ("second", "created"),
        ("second", "running"),
        ("second", "paused"),
        ("second", "running"),
        ("second", "waiting"),
        ("second", "pending"),
        ("BLOCK_JOB_PENDING", {"type": "backup", "id": "second"}),
        (
            "BLOCK_JOB_COMPLETED",
            {"device": "second", "len": MiB, "offset": MiB, "speed": 0, "type": "backup"},
        ),
        ("second", "concluded"),
        ("second", "null"),
    ]
    # A cursor at the newest event: nothing more.
    assert back.ok("x-qmpjobd-query-events", since=cursor(after[-1])) == {
        "events": [],
        "gap": False,
    }
    back.close()
    watcher.close()


@pytest.mark.parametrize("state", [True, False], ids=["state-dir", "in-memory"])
def test_retention_reports_a_gap(daemons: list[Daemon], sock_dir: Path, state: bool) -> None:
    daemon = _daemon(daemons, sock_dir, state, "--journal-max-events", "4")
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "src")
    _add_null(c, "dst")
    _backup(c, "j", **{"auto-dismiss": True})
    c.wait_for("JOB_STATUS_CHANGE", id="j", status="null")
    assert len(c.events) == 9
    first, kept = c.events[0], c.events[-4:]
    assert c.ok("x-qmpjobd-query-events", since=cursor(first)) == {"events": kept, "gap": True}
    # The newest dropped event is the oldest cursor that needs nothing dropped.
    assert c.ok("x-qmpjobd-query-events", since=cursor(c.events[-5])) == {
        "events": kept,
        "gap": False,
    }
    assert c.ok("x-qmpjobd-query-events", since=ZERO)["gap"] is True
    c.close()


def test_the_extension_command_is_unstable(daemons: list[Daemon], sock_dir: Path) -> None:
    daemon = _daemon(daemons, sock_dir, False)
    daemon.start()
    c = Client(daemon.sock)
    schema = c.ok("query-qmp-schema")
    entry = next(e for e in schema if e["name"] == "x-qmpjobd-query-events")
    assert entry["features"] == ["unstable"]
    assert c.execute("x-qmpjobd-query-events", since={"seconds": 1}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'since.microseconds' is missing"}
    }
    c.close()


@pytest.fixture
def small_disk(sock_dir: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skipped where mounting is not permitted)."""
    mnt = sock_dir / "mnt"
    mnt.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write to ``path`` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_a_full_disk_refuses_changes_and_loses_nothing(
    daemons: list[Daemon], sock_dir: Path, small_disk: Path
) -> None:
    state = small_disk / "state"
    daemon = Daemon(sock_dir / "qmp.sock", state, log=sock_dir / "daemon.log")
    daemons.append(daemon)
    daemon.start()
    c = Client(daemon.sock)
    _add_null(c, "src")
    _add_null(c, "dst")
    _backup(c, "kept")
    c.wait_for("JOB_STATUS_CHANGE", id="kept", status="concluded")
    kept = c.ok("query-jobs")
    _fill(small_disk / "filler")
    refused = None
    for i in range(500):
        reply = c.execute(
            "blockdev-backup",
            device="src",
            target="dst",
            sync="full",
            **{"job-id": f"j{i}", "auto-dismiss": True},
        )
        if "error" in reply:
            refused = reply
            break
        c.wait_for("JOB_STATUS_CHANGE", id=f"j{i}", status="null")
    # The database or the change log, whichever needed a new page first.
    assert refused is not None
    reason = refused["error"]["desc"].removeprefix("State directory cannot be written: ")
    assert refused == {
        "error": {"class": "GenericError", "desc": f"State directory cannot be written: {reason}"}
    }
    failed = {
        "database or disk is full": "ledger.sqlite3",
        "No space left on device": "changes.log",
    }
    assert reason in failed
    assert f"error: state directory: cannot write {state}/{failed[reason]}: {reason}" in (
        daemon.log_text()
    )
    # Still serving: queries answer, and changes are refused with the reason.
    assert c.ok("query-jobs") == kept
    assert "error" in c.execute("blockdev-add", driver="null-co", **{"node-name": "more"})
    # Space again: the pending changes are written, commands are accepted.
    (small_disk / "filler").unlink()
    deadline = time.monotonic() + 10
    while "error" in c.execute("blockdev-add", driver="null-co", **{"node-name": "more"}):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "warning: state directory: writing again" in daemon.log_text()
    c.close()
    daemon.kill()
    daemon.start()
    c = Client(daemon.sock)
    assert c.ok("query-jobs") == kept
    assert [n["node-name"] for n in c.ok("query-named-block-nodes")] == ["more", "dst", "src"]
    c.close()


def _ledger(state: Path, **limits: Any) -> Ledger:
    clock = ManualClock(1_800_000_000.0)
    return Ledger(
        state,
        max_events=limits.get("max_events", 100),
        max_age=limits.get("max_age", 3600.0),
        now=clock.wall,
    )


def _event(us: int, status: str) -> Event:
    return Event("JOB_STATUS_CHANGE", {"status": status, "id": "j"}, divmod(us, 1_000_000), 0)


def test_the_change_log_is_replayed_and_a_torn_record_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What was logged but not applied to the database comes back after a
    crash; a record cut short by one is dropped, and what follows it too."""
    state = tmp_path / "state"
    first = _ledger(state)
    assert first.open() == Snapshot([], [], (0, 0))
    first.put_node("n0", {"driver": "null-co", "node-name": "n0"})
    first.append_event(_event(1_800_000_000_000_001, "created"))
    assert first.commit()
    first.append_event(_event(1_800_000_000_000_002, "running"))
    assert first.commit()
    # The writer thread never ran (no event loop): the log holds both commits.
    log = (state / "changes.log").read_bytes()
    assert log.count(b"JOB_STATUS_CHANGE") == 2
    with open(state / "changes.log", "ab") as f:
        f.write(b"\x40\x00\x00\x00torn")
    second = _ledger(state)
    snapshot = second.open()
    assert snapshot == Snapshot(
        [("n0", {"driver": "null-co", "node-name": "n0"})], [], (1_800_000_000, 2)
    )
    assert "changes.log: a torn record at byte" in caplog.text
    assert (state / "changes.log").read_bytes() == b""

    async def read() -> tuple[list[Event], int]:
        return await second.events_after((0, 0))

    events, horizon = asyncio.run(read())
    assert [(e.data["status"], e.timestamp) for e in events] == [
        ("created", (1_800_000_000, 1)),
        ("running", (1_800_000_000, 2)),
    ]
    assert horizon == 0
    second.close()
    # The first one "crashed": let go of what it holds without writing.
    assert first._writer is not None and first._db is not None
    first._writer.shutdown()
    first._db.close()
    for fd in (first._log_fd, first._lock_fd):
        assert fd is not None
        os.close(fd)


def _rows(db: Any) -> list[tuple[int, int, int]]:
    return list(db.db.execute("SELECT first_ts, last_ts, count FROM events ORDER BY last_ts"))


def test_retention_after_an_apply_drops_whole_rows_and_a_read_is_exact(tmp_path: Path) -> None:
    """After an apply the count limit drops whole rows only (read by their
    counts, none decoded), leaving at most one row over; a read trims exactly,
    cutting a row; the next trim counts what is left of the cut row."""
    from qmpjobd.ledger.store import _Database

    tmp_path.mkdir(exist_ok=True)
    db = _Database(tmp_path / "ledger.sqlite3", 10, 3600.0)
    seq = 0

    def apply(stamps: range) -> None:
        nonlocal seq
        seq += 1
        text = "[" + ",".join(f'[{t},"E",{{}}]' for t in stamps) + "]"
        db.apply([[seq, [], [], [], [], text, stamps[0], stamps[-1], len(stamps)]])

    for first in range(1, 21, 4):  # five rows of four events: 1-4, ..., 17-20
        apply(range(first, first + 4))
    now = 1_000_000_000
    db.prune(now)
    assert (db.horizon, db.event_count) == (8, 12)
    assert _rows(db) == [(9, 12, 4), (13, 16, 4), (17, 20, 4)]
    db.prune(now, exact=True)
    assert (db.horizon, db.event_count) == (10, 10)
    assert [e.timestamp[1] for e in db.events_after(0)] == list(range(11, 21))
    apply(range(21, 25))
    db.prune(now)  # 14 events: the two left of the cut row go, not the next row
    assert (db.horizon, db.event_count) == (12, 12)
    assert _rows(db) == [(13, 16, 4), (17, 20, 4), (21, 24, 4)]
    # Age: after an apply, only rows wholly older than the limit.
    db.max_events = 100
    db.age_due = True
    db.prune(3600 * 1_000_000 + 18)
    assert (db.horizon, db.event_count) == (16, 8)
    db.prune(3600 * 1_000_000 + 18, exact=True)
    assert (db.horizon, db.event_count) == (17, 7)
    db.close()


def test_an_apply_of_many_jobs_and_nodes_writes_them_in_chunks(tmp_path: Path) -> None:
    """More rows than one statement takes: every one is written, updated or
    deleted, in the order kept by their sequence numbers."""
    from qmpjobd.jobs import JobRecord
    from qmpjobd.ledger.store import ROWS_PER_STATEMENT, _Database

    n = ROWS_PER_STATEMENT * 2 + 5
    db = _Database(tmp_path / "ledger.sqlite3", 100, 3600.0)
    records = [JobRecord(f"j{i}", "backup", "running", i, n, nodes=("a", "b")) for i in range(n)]
    nodes = [[f"n{i}", {"driver": "null-co", "node-name": f"n{i}"}] for i in range(n)]
    db.apply([[1, records, [], nodes, [], "[]", 0, 0, 0]])
    done = [r._replace(status="concluded") for r in records[::2]]
    gone = [r.id for r in records[1::2]]
    db.apply([[2, done, gone, [], [name for name, _ in nodes[5:]], "[]", 0, 0, 0]])
    snapshot = db.snapshot()
    assert snapshot.jobs == done
    assert snapshot.nodes == [(name, options) for name, options in nodes[:5]]
    db.close()
