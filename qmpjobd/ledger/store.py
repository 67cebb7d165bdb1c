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
from dataclasses import dataclass
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
    name TEXT PRIMARY KEY, seq INTEGER NOT NULL, options TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL,
    current_progress INTEGER NOT NULL, total_progress INTEGER NOT NULL, speed INTEGER NOT NULL,
    error TEXT, ret INTEGER NOT NULL, auto_finalize INTEGER NOT NULL,
    auto_dismiss INTEGER NOT NULL, io_status TEXT NOT NULL, paused INTEGER NOT NULL,
    nodes TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    last_ts INTEGER PRIMARY KEY, first_ts INTEGER NOT NULL, count INTEGER NOT NULL,
    data TEXT NOT NULL);
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


_JOB_COLUMNS = (
    "id, type, status, current_progress, total_progress, speed, error, ret, "
    "auto_finalize, auto_dismiss, io_status, paused, nodes"
)
_PUT_JOB = (
    f"INSERT INTO jobs(seq, {_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
    "current_progress = excluded.current_progress, total_progress = excluded.total_progress, "
    "speed = excluded.speed, error = excluded.error, ret = excluded.ret, "
    "io_status = excluded.io_status, paused = excluded.paused, nodes = excluded.nodes"
)


def _job_record(row: tuple[Any, ...]) -> JobRecord:
    (job_id, job_type, status, current, total, speed, error, ret, af, ad, io, paused, nodes) = row
    return JobRecord(
        job_id,
        job_type,
        status,
        int(current),
        int(total),
        int(speed),
        error,
        int(ret),
        bool(af),
        bool(ad),
        io,
        bool(paused),
        tuple(nodes.split(",")) if nodes else (),
    )


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
        #: events not yet written, as published (encoded at commit)
        self._events: list[Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._event_count = 0
        self._horizon = 0
        #: the age limit is applied at the next commit (set once a second)
        self._age_due = True
        self._age_timer: asyncio.TimerHandle | None = None
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
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
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
        # One connection, one process: exclusive locking spares the WAL its
        # shared-memory index and the lock calls of every transaction.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
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
        for row in db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq"):
            try:
                jobs.append(_job_record(row))
            except (ValueError, TypeError) as exc:
                log.error("state directory: job %r: unreadable record (%s); dropped", row[0], exc)
                self._jobs[row[0]] = None
        self._seq = max(
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0],
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0],
        )
        self._horizon = db.execute("SELECT value FROM meta WHERE key='horizon'").fetchone()[0]
        self._event_count = _count_after(db, self._horizon)
        last = db.execute("SELECT COALESCE(MAX(last_ts), 0) FROM events").fetchone()[0]
        return Snapshot(nodes, jobs, _ts(max(last, self._horizon)))

    def close(self) -> None:
        """Write what is pending (if the disk lets us), close, unlock."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
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
        if not self._scheduled:
            self._schedule()

    def delete_job(self, job_id: str) -> None:
        self._jobs[job_id] = None
        if not self._scheduled:
            self._schedule()

    def put_node(self, name: str, options: Mapping[str, Any]) -> None:
        self._nodes[name] = json.dumps(options)
        self._schedule()

    def delete_node(self, name: str) -> None:
        self._nodes[name] = None
        self._schedule()

    def append_event(self, event: Event) -> None:
        """The journal's bus sink (on the hot path: encoding waits for the commit)."""
        self._events.append(event)
        if not self._scheduled:
            self._schedule()

    @property
    def dirty(self) -> bool:
        return bool(self._jobs or self._nodes or self._events)

    def _schedule(self) -> None:
        if self._scheduled:
            return
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
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
            db.execute("BEGIN")
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
        events: list[Event],
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
        seq = self._seq
        for record in jobs.values():
            if record is not None:
                seq += 1
                rows.append((seq, *record[:-1], ",".join(record.nodes)))
        self._seq = seq
        if rows:
            db.executemany(_PUT_JOB, rows)
        if events:
            # One row per commit: its events as one JSON array of [ts, name, data].
            batch = [[e.timestamp[0] * 1_000_000 + e.timestamp[1], e.name, e.data] for e in events]
            db.execute(
                "INSERT INTO events(last_ts, first_ts, count, data) VALUES (?, ?, ?, ?)",
                (batch[-1][0], batch[0][0], len(batch), json.dumps(batch)),
            )

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

    def _prune(self, db: sqlite3.Connection, *, exact: bool = False) -> None:
        """Drop journaled events beyond the count, and (once a second) the age.

        After a commit, the count is trimmed by tenths (not on every commit);
        before a read, exactly. The horizon (the newest dropped timestamp) is
        exact; rows wholly at or below it are deleted, a row it cuts is
        filtered when read.
        """
        horizon = self._horizon
        excess = self._event_count - self.max_events
        if excess >= (1 if exact else max(1, self.max_events // 10)):
            for ts in _timestamps_after(db, horizon):
                excess -= 1
                if excess == 0:
                    horizon = ts
                    break
        if self._age_due:
            self._age_due = False
            self._arm_age_check()
            cutoff = _us(self._now()) - int(self.max_age * 1e6)
            if cutoff > horizon:
                older = list(_timestamps_after(db, horizon, below=cutoff))
                if older:
                    horizon = older[-1]
        if horizon <= self._horizon:
            return
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM events WHERE last_ts <= ?", (horizon,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'horizon'", (horizon,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.warning("state directory: cannot trim the journal: %s", _reason(exc))
            return
        self._horizon = horizon
        self._event_count = _count_after(db, horizon)

    def _arm_age_check(self) -> None:
        if self._age_timer is not None or self._loop is None:
            return
        self._age_timer = self._loop.call_later(1.0, self._age_check_due)

    def _age_check_due(self) -> None:
        self._age_timer = None
        self._age_due = True

    def trim(self) -> None:
        """Apply both limits exactly, now (before answering a query)."""
        self._age_due = True
        if self._db is not None and self.commit():
            self._prune(self._db, exact=True)

    # -- reading the journal -------------------------------------------------

    @property
    def horizon(self) -> tuple[int, int]:
        """The newest timestamp retention dropped ((0, 0) if none was)."""
        return _ts(self._horizon)

    def events_after(self, since: tuple[int, int]) -> Iterator[Event]:
        """Journaled events after ``since``, oldest first (pending ones included)."""
        cursor = max(_us(since), self._horizon)
        if self._db is not None:
            rows = self._db.execute(
                "SELECT data FROM events WHERE last_ts > ? ORDER BY last_ts", (cursor,)
            ).fetchall()
            for (data,) in rows:
                for ts, name, members in json.loads(data):
                    if ts > cursor:
                        yield Event(name, members, _ts(ts), 0)
        for event in self._events:
            if _us(event.timestamp) > cursor:
                yield event


def _timestamps_after(
    db: sqlite3.Connection, after: int, below: int | None = None
) -> Iterator[int]:
    """Journaled timestamps after ``after`` (and below ``below``), oldest first."""
    query = "SELECT data FROM events WHERE last_ts > ?"
    params: tuple[int, ...] = (after,)
    if below is not None:
        query += " AND first_ts < ?"
        params = (after, below)
    for (data,) in db.execute(query + " ORDER BY last_ts", params).fetchall():
        for ts, _name, _data in json.loads(data):
            if ts > after and (below is None or ts < below):
                yield ts


def _count_after(db: sqlite3.Connection, after: int) -> int:
    """How many journaled events are newer than ``after``."""
    whole = db.execute(
        "SELECT COALESCE(SUM(count), 0) FROM events WHERE first_ts > ?", (after,)
    ).fetchone()[0]
    cut = db.execute(
        "SELECT data FROM events WHERE first_ts <= ? AND last_ts > ?", (after, after)
    ).fetchall()
    return int(whole) + sum(1 for (data,) in cut for ts, *_ in json.loads(data) if ts > after)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
