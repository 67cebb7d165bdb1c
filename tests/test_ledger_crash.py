"""SIGKILL at random moments during job churn, restart on the same state
directory, and check what the client was told against what came back.

After every restart: the database passes SQLite's integrity check; every job
whose start the client saw acknowledged is listed, concluded, unless the
client dismissed it (and a job the client saw concluded keeps the error it
saw); the ledger agrees with the journal (a job is listed exactly when its
last journaled status is not ``null``); and the journal holds every event the
client saw, in order, once, with strictly increasing timestamps.

The quick variant (10 kills) runs by default; the slow one (200 kills) is
marked ``slow``: ``pytest -m slow tests/test_ledger_crash.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .support.ledger import Client, Daemon

LANES = 4
ZERO = {"seconds": 0, "microseconds": 0}


def _stamp(event: dict[str, Any]) -> tuple[int, int]:
    return event["timestamp"]["seconds"], event["timestamp"]["microseconds"]


@dataclass
class Model:
    """What the client was told, across every life of the daemon."""

    #: job ids whose blockdev-backup was acknowledged
    acked: set[str] = field(default_factory=set)
    #: job ids whose dismiss was sent but not acknowledged
    maybe_dismissed: set[str] = field(default_factory=set)
    #: the last status the client saw per job
    status: dict[str, str] = field(default_factory=dict)
    #: the error the client saw in a job's BLOCK_JOB_COMPLETED (None: none),
    #: or "cancelled" for BLOCK_JOB_CANCELLED
    error: dict[str, str | None] = field(default_factory=dict)
    #: events seen in the current life of the daemon
    seen: list[dict[str, Any]] = field(default_factory=list)
    #: the last status per job, according to the journal
    journaled: dict[str, str] = field(default_factory=dict)
    #: how each job ended, according to the journal (its error, or "cancelled")
    ending: dict[str, str | None] = field(default_factory=dict)
    #: where the journal was checked up to
    cursor: dict[str, int] = field(default_factory=lambda: dict(ZERO))
    #: jobs started with auto-finalize false
    manual: set[str] = field(default_factory=set)
    jobs_started: int = 0
    kills: int = 0

    def saw(self, event: dict[str, Any]) -> None:
        self.seen.append(event)
        data = event["data"]
        if event["event"] == "JOB_STATUS_CHANGE":
            self.status[data["id"]] = data["status"]
        elif event["event"] == "BLOCK_JOB_COMPLETED":
            self.error[data["device"]] = data.get("error")
        elif event["event"] == "BLOCK_JOB_CANCELLED":
            self.error[data["device"]] = "cancelled"


class ChurnClient(Client):
    """Runs LANES jobs at a time and steers them; every event goes to the model."""

    def __init__(self, path: Path, model: Model, rng: random.Random) -> None:
        self.model = model
        self.rng = rng
        super().__init__(path)

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self._line(None))
        if "event" in message:
            self.model.saw(message)
        return message

    def _line(self, timeout: float | None) -> bytes:
        """The next line; raises TimeoutError if none is complete in time
        (nothing is lost: a partial line stays buffered)."""
        buffer = self.__dict__.setdefault("_buffer", bytearray())
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                return line
            if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
                raise TimeoutError
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            buffer += data

    def churn(self, lanes: dict[int, str | None]) -> None:
        """Until the connection drops: keep every lane busy."""
        m = self.model
        while True:
            for lane, job in lanes.items():
                if job is not None:
                    continue
                m.jobs_started += 1
                job = f"j{m.jobs_started}"
                extra: dict[str, Any] = {"auto-dismiss": False}
                if self.rng.random() < 0.3:
                    extra["auto-finalize"] = False
                    m.manual.add(job)
                if self.rng.random() < 0.3:
                    extra["speed"] = 4 << 20  # a few slices: longer in flight
                reply = self.execute(
                    "blockdev-backup",
                    device=f"s{lane}",
                    target=f"t{lane}",
                    sync="full",
                    **{"job-id": job, **extra},
                )
                assert "return" in reply, reply
                m.acked.add(job)
                lanes[lane] = job
            self.events.clear()
            self.recv_event_or_timeout()
            for lane, job in lanes.items():
                if job is None:
                    continue
                status = m.status.get(job)
                if status == "pending" and job in m.manual:
                    self.ok("job-finalize", id=job)
                elif status == "concluded":
                    m.maybe_dismissed.add(job)
                    self.ok("job-dismiss", id=job)
                    m.maybe_dismissed.discard(job)
                    lanes[lane] = None
                elif status == "running" and self.rng.random() < 0.02:
                    self.execute("job-cancel", id=job)

    def recv_event_or_timeout(self) -> None:
        with contextlib.suppress(TimeoutError):
            message: dict[str, Any] = json.loads(self._line(0.05))
            assert "event" in message, message
            self.model.saw(message)


def _check_database(state: Path) -> None:
    """The database a killed daemon left opens and passes SQLite's check."""
    db = sqlite3.connect(state / "ledger.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def _check_after_restart(daemon: Daemon, model: Model) -> None:
    c = Client(daemon.sock)
    try:
        read = c.ok("x-qmpjobd-query-events", since=model.cursor)
        listed = {job["id"]: job for job in c.ok("query-jobs")}
        nodes = {n["node-name"] for n in c.ok("query-named-block-nodes")}
    finally:
        c.close()
    assert read["gap"] is False
    journal = read["events"]
    stamps = [_stamp(e) for e in journal]
    assert stamps == sorted(set(stamps)), "timestamps not strictly increasing"
    assert not stamps or stamps[0] > (model.cursor["seconds"], model.cursor["microseconds"])
    # Every event the client saw, in order (a subsequence of the journal).
    it = iter(journal)
    for event in model.seen:
        assert any(e == event for e in it), f"journal lacks {event}"
    for e in journal:
        data = e["data"]
        if e["event"] == "JOB_STATUS_CHANGE":
            model.journaled[data["id"]] = data["status"]
        elif e["event"] == "BLOCK_JOB_COMPLETED":
            model.ending[data["device"]] = data.get("error")
        elif e["event"] == "BLOCK_JOB_CANCELLED":
            model.ending[data["device"]] = "cancelled"
    if journal:
        model.cursor = dict(journal[-1]["timestamp"])
    model.seen.clear()
    # The ledger agrees with the journal.
    expected = {job for job, status in model.journaled.items() if status != "null"}
    assert set(listed) == expected
    assert {job["status"] for job in listed.values()} <= {"concluded"}
    # And with what the client was told.
    for job in model.acked:
        if model.status.get(job) == "null":
            assert job not in listed, job
        elif job not in model.maybe_dismissed:
            assert job in listed, job
        if job in listed and model.status.get(job) == "concluded":
            if model.error.get(job) == "cancelled":
                assert listed[job]["error"] == "Operation canceled", job
                continue
            assert listed[job].get("error") == model.error.get(job), job
    for job, info in listed.items():
        ending = model.ending.get(job)
        if ending != "cancelled":
            assert info.get("error") == ending, (job, info)
    for lane in range(LANES):
        assert {f"s{lane}", f"t{lane}"} <= nodes or not nodes


def _crash_run(sock_dir: Path, kills: int, seed: int) -> Model:
    rng = random.Random(seed)
    model = Model()
    daemon = Daemon(
        sock_dir / "qmp.sock",
        sock_dir / "state",
        "--journal-max-events",
        "10000000",
        log=sock_dir / "daemon.log",
    )
    try:
        daemon.start()
        while model.kills < kills:
            client = ChurnClient(daemon.sock, model, rng)
            # Nodes (again, if their blockdev-add was lost) and leftovers dismissed.
            have = {n["node-name"] for n in client.ok("query-named-block-nodes")}
            for lane in range(LANES):
                for name in (f"s{lane}", f"t{lane}"):
                    if name not in have:
                        client.ok(
                            "blockdev-add", driver="null-co", size=1 << 20, **{"node-name": name}
                        )
            for job in client.ok("query-jobs"):
                model.maybe_dismissed.add(job["id"])
                client.ok("job-dismiss", id=job["id"])
                model.maybe_dismissed.discard(job["id"])
            assert daemon.proc is not None
            pid = daemon.proc.pid
            timer = threading.Timer(rng.uniform(0.01, 0.25), os.kill, (pid, signal.SIGKILL))
            timer.start()
            try:
                client.churn(dict.fromkeys(range(LANES)))
            except (ConnectionError, OSError):
                pass
            finally:
                timer.join()
                client.close()
            daemon.kill()
            model.kills += 1
            assert daemon.state_dir is not None
            _check_database(daemon.state_dir)
            daemon.start()
            _check_after_restart(daemon, model)
    except BaseException:
        print(daemon.log_text()[-4000:])
        raise
    finally:
        daemon.stop()
    return model


def test_sigkill_during_churn_quick(sock_dir: Path) -> None:
    t0 = time.monotonic()
    model = _crash_run(sock_dir, kills=10, seed=1)
    assert model.kills == 10
    assert model.jobs_started > 10
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_during_churn(sock_dir: Path) -> None:
    model = _crash_run(sock_dir, kills=200, seed=int(os.environ.get("CRASH_SEED", "2")))
    assert model.kills == 200
    print(f"{model.kills} kills, {model.jobs_started} jobs started, {len(model.acked)} acked")
