"""The state directory: a locked folder holding one SQLite database.

:class:`Ledger` keeps three tables: the block nodes the monitor added (name
and ``blockdev-add`` options), the job records (:class:`~qmpjobd.jobs.JobRecord`)
and the event journal (one row per event, keyed by its timestamp in
microseconds, which the bus makes strictly increasing). Changes are gathered
in memory while the event loop runs and written in one transaction by
:meth:`Ledger.commit`, which the daemon calls before anything is written to
a monitor (and soon after any change, when nobody is connected). A job
changed twice in one pass is written once.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit is an
append to the write-ahead log, without ``fsync``; it survives the process
being killed at any moment. A power loss may lose the last commits (never
the database's consistency); a checkpoint (every 1000 pages) syncs.

When a commit fails (a full disk), nothing is lost from memory: the changes
stay pending, :attr:`Ledger.error` says why, and the next commit tries again.

Must not import: sockets, wire, protocol, session, server, commands, block.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..events import Event
from ..jobs import JobRecord

log = logging.getLogger(__name__)

DB_NAME = "ledger.sqlite3"
LOCK_NAME = "lock"
SCHEMA_VERSION = 1
#: After a failed commit, try again this many seconds later.
RETRY_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, seq INTEGER NOT NULL, options TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    ts INTEGER PRIMARY KEY, name TEXT NOT NULL, data TEXT NOT NULL);
"""


def _us(timestamp: tuple[int, int]) -> int:
    return timestamp[0] * 1_000_000 + timestamp[1]


def _ts(us: int) -> tuple[int, int]:
    seconds, micro = divmod(us, 1_000_000)
    return seconds, micro


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a state directory held when it was opened."""

    #: (name, blockdev-add options), oldest first
    nodes: list[tuple[str, dict[str, Any]]]
    #: job records, oldest first
    jobs: list[JobRecord]
    #: the newest journaled event's timestamp ((0, 0) if none)
    last_timestamp: tuple[int, int]


def _job_record(text: str) -> JobRecord:
    fields = json.loads(text)
    fields["nodes"] = tuple(fields.get("nodes", ()))
    return JobRecord(**fields)


class Ledger:
    """A state directory, opened and locked.

    :param path: the directory (created with mode 0700 if missing).
    :param max_events: journal retention: at most this many events.
    :param max_age: journal retention: events at most this many seconds old.
    :param now: wall-clock time as (seconds, microseconds), for the age limit.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_events: int,
        max_age: float,
        now: Callable[[], tuple[int, int]],
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self._now = now
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # pending changes: id -> record (None: delete), name -> options JSON (None: delete)
        self._jobs: dict[str, JobRecord | None] = {}
        self._nodes: dict[str, str | None] = {}
        self._events: list[tuple[int, str, str]] = []
        self._seq = 0
        self._event_count = 0
        self._horizon = 0
        self._last_age_check = 0
        self._scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        #: Why the last commit failed (None while commits succeed).
        self.error: str | None = None
        #: Commits that wrote something (for tests and the status line).
        self.commits = 0

    # -- open / close --------------------------------------------------------

    def open(self) -> Snapshot:
        """Create or open the directory, lock it, open the database, read it.

        :raise ConfigError: ``--state-dir DIR: ...`` (locked by another
            daemon, not a directory, an unreadable database).
        """
        try:
            self._lock()
            self._db = self._connect()
            return self._load()
        except ConfigError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"--state-dir {self.path}: {_reason(exc)}") from None

    def _lock(self) -> None:
        path = self.path
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
        if not path.is_dir():
            raise ConfigError(f"--state-dir {path}: Not a directory")
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(f"--state-dir {path}: in use by another qmpjobd{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path / DB_NAME, isolation_level=None, check_same_thread=False)
        os.chmod(self.path / DB_NAME, 0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('version', ?), ('horizon', 0)",
            (SCHEMA_VERSION,),
        )
        return db

    def _load(self) -> Snapshot:
        db = self._db
        assert db is not None
        nodes = [
            (name, json.loads(options))
            for name, options in db.execute("SELECT name, options FROM nodes ORDER BY seq")
        ]
        jobs = []
        for job_id, text in db.execute("SELECT id, record FROM jobs ORDER BY seq"):
            try:
                jobs.append(_job_record(text))
            except (ValueError, TypeError) as exc:
                log.error("state directory: job %r: unreadable record (%s); dropped", job_id, exc)
                self._jobs[job_id] = None
        self._seq = max(
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0],
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0],
        )
        self._event_count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        self._horizon = db.execute("SELECT value FROM meta WHERE key='horizon'").fetchone()[0]
        last = db.execute("SELECT COALESCE(MAX(ts), 0) FROM events").fetchone()[0]
        return Snapshot(nodes, jobs, _ts(max(last, self._horizon)))

    def close(self) -> None:
        """Write what is pending (if the disk lets us), close, unlock."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._db is not None:
            self.commit()
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- changes -------------------------------------------------------------

    def put_job(self, record: JobRecord) -> None:
        self._jobs[record.id] = record
        self._schedule()

    def delete_job(self, job_id: str) -> None:
        self._jobs[job_id] = None
        self._schedule()

    def put_node(self, name: str, options: Mapping[str, Any]) -> None:
        self._nodes[name] = json.dumps(options)
        self._schedule()

    def delete_node(self, name: str) -> None:
        self._nodes[name] = None
        self._schedule()

    def append_event(self, event: Event) -> None:
        self._events.append((_us(event.timestamp), event.name, json.dumps(dict(event.data))))
        self._schedule()

    @property
    def dirty(self) -> bool:
        return bool(self._jobs or self._nodes or self._events)

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = True
        loop.call_soon(self._scheduled_commit)

    def _scheduled_commit(self) -> None:
        self._scheduled = False
        self.commit()

    # -- commit --------------------------------------------------------------

    def commit(self) -> bool:
        """Write every pending change in one transaction; False if it failed."""
        db = self._db
        if db is None or not self.dirty:
            return self.error is None
        jobs, nodes, events = self._jobs, self._nodes, self._events
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write(db, jobs, nodes, events)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._failed(exc)
            return False
        self._jobs, self._nodes, self._events = {}, {}, []
        self._event_count += len(events)
        self.commits += 1
        if self.error is not None:
            log.warning("state directory: writing again (%d changes were pending)", len(events))
            self.error = None
        self._prune(db)
        return True

    def _write(
        self,
        db: sqlite3.Connection,
        jobs: dict[str, JobRecord | None],
        nodes: dict[str, str | None],
        events: list[tuple[int, str, str]],
    ) -> None:
        deleted = [(k,) for k, v in nodes.items() if v is None]
        if deleted:
            db.executemany("DELETE FROM nodes WHERE name = ?", deleted)
        for name, options in nodes.items():
            if options is not None:
                self._seq += 1
                db.execute(
                    "INSERT INTO nodes(name, seq, options) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET options = excluded.options",
                    (name, self._seq, options),
                )
        gone = [(k,) for k, v in jobs.items() if v is None]
        if gone:
            db.executemany("DELETE FROM jobs WHERE id = ?", gone)
        rows = []
        for job_id, record in jobs.items():
            if record is not None:
                self._seq += 1
                rows.append((job_id, self._seq, json.dumps(asdict(record))))
        if rows:
            db.executemany(
                "INSERT INTO jobs(id, seq, record) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                rows,
            )
        if events:
            db.executemany("INSERT INTO events(ts, name, data) VALUES (?, ?, ?)", events)

    def _failed(self, exc: sqlite3.Error) -> None:
        reason = _reason(exc)
        if self.error != reason:
            log.error("state directory: cannot write %s: %s", self.path / DB_NAME, reason)
        self.error = reason
        if self._retry is None:
            with contextlib.suppress(RuntimeError):
                self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self.dirty:
            self.commit()

    # -- the journal's retention ---------------------------------------------

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop journaled events beyond the count, and (once a second) the age."""
        cutoff = 0
        excess = self._event_count - self.max_events
        if excess > 0:
            row = db.execute(
                "SELECT ts FROM events ORDER BY ts LIMIT 1 OFFSET ?", (excess - 1,)
            ).fetchone()
            if row is not None:
                cutoff = row[0]
        now = _us(self._now())
        if now - self._last_age_check >= 1_000_000:
            self._last_age_check = now
            row = db.execute(
                "SELECT MAX(ts) FROM events WHERE ts < ?", (now - int(self.max_age * 1e6),)
            ).fetchone()
            if row is not None and row[0] is not None:
                cutoff = max(cutoff, row[0])
        if cutoff <= 0:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            dropped = db.execute("DELETE FROM events WHERE ts <= ?", (cutoff,)).rowcount
            horizon = max(self._horizon, cutoff)
            db.execute("UPDATE meta SET value = ? WHERE key = 'horizon'", (horizon,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.warning("state directory: cannot trim the journal: %s", _reason(exc))
            return
        self._event_count -= dropped
        self._horizon = horizon

    def prune_by_age(self) -> None:
        """Apply the age limit now (before answering a query)."""
        self._last_age_check = 0
        if self._db is not None and self.commit():
            self._prune(self._db)

    # -- reading the journal -------------------------------------------------

    @property
    def horizon(self) -> tuple[int, int]:
        """The newest timestamp retention dropped ((0, 0) if none was)."""
        return _ts(self._horizon)

    def events_after(self, since: tuple[int, int]) -> Iterator[Event]:
        """Journaled events after ``since``, oldest first (pending ones included)."""
        cursor = _us(since)
        if self._db is not None:
            rows = self._db.execute(
                "SELECT ts, name, data FROM events WHERE ts > ? ORDER BY ts", (cursor,)
            ).fetchall()
            for ts, name, data in rows:
                yield Event(name, json.loads(data), _ts(ts), 0)
        for ts, name, data in self._events:
            if ts > cursor:
                yield Event(name, json.loads(data), _ts(ts), 0)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
