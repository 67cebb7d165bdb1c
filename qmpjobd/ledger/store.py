"""The state directory: a locked folder with a change log and a SQLite database.

What changed (job records, the monitor's block nodes, events) is gathered
in memory while the event loop runs. :meth:`Ledger.commit`, which the daemon
calls before anything is written to a monitor (and soon after any change
when nobody is connected), appends it as one framed record (length, CRC-32,
JSON) to ``changes.log`` with a single ``write``: once that returns, the
change survives the process being killed. A writer thread then applies the
records to ``ledger.sqlite3`` (WAL mode, ``synchronous=NORMAL``) in large
transactions, off the event loop, and the log is emptied once everything in
it is in the database. At start-up, records the database had not applied
are replayed (a torn last record, from a power loss, is dropped).

The database holds the nodes (name, ``blockdev-add`` options), the job
records (:class:`~qmpjobd.jobs.JobRecord`) and the journal (one row per
applied batch of events, in timestamp order; the bus makes timestamps
strictly increasing). Reads (the journal) run on the writer thread too,
after everything committed so far is applied.

Neither the log nor the database is synced on every commit: a power loss
may lose the last changes (never the consistency of what remains). When a
write fails (a full disk), nothing is lost from memory: the changes stay
pending, :attr:`Ledger.error` says why, and they are written again later.

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
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..events import Event
from ..jobs import Job, JobRecord, record_of

log = logging.getLogger(__name__)

DB_NAME = "ledger.sqlite3"
LOG_NAME = "changes.log"
LOCK_NAME = "lock"
SCHEMA_VERSION = 1
#: After a failed write, try again this many seconds later.
RETRY_SECONDS = 1.0
#: How long logged changes gather before the writer thread applies them.
#: A round costs about the same however much it applies, and each of its
#: calls into SQLite takes the GIL back from the event loop: under a steady
#: load, 200 ms between rounds cost the loop much less than 50 ms did.
APPLY_DELAY = 0.2
#: The change log is emptied once it is this big and fully applied.
LOG_LIMIT = 1 << 20
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload

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

_JOB_COLUMNS = (
    "id, type, status, current_progress, total_progress, speed, error, ret, "
    "auto_finalize, auto_dismiss, io_status, paused, nodes"
)
_JOB_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PUT_JOBS = (
    f"INSERT INTO jobs(seq, {_JOB_COLUMNS}) VALUES {{}} "
    "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
    "current_progress = excluded.current_progress, total_progress = excluded.total_progress, "
    "speed = excluded.speed, error = excluded.error, ret = excluded.ret, "
    "io_status = excluded.io_status, paused = excluded.paused, nodes = excluded.nodes"
)
#: Rows per statement when many rows change at once: one call into SQLite
#: for them, not one per row (each call gives up the GIL and takes it back,
#: and taking it back from a busy event loop stalls the loop). 64 rows of 14
#: values stay within the oldest SQLite's 999 parameters.
ROWS_PER_STATEMENT = 64

#: One commit, as logged and applied:
#: [seq, job rows, deleted job ids, [node name, options] pairs, deleted node
#: names, events, first timestamp, last timestamp, count], the events as the
#: JSON text of [[timestamp in µs, name, data], ...] (encoded once, on the
#: event loop, and stored as it is).
Batch = list[Any]


def _unencodable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


#: Compact JSON, ASCII only, made once (``json.dumps`` builds an encoder per call).
_ENCODER: Callable[[object, int], list[str]] = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None,  # no check for cycles: records, options and event data are trees
    _unencodable,
    json.encoder.encode_basestring_ascii,
    None,
    ":",
    ",",
    False,
    False,
    True,
)


def _json(obj: object) -> str:
    """``json.dumps(obj, separators=(",", ":"))``, faster."""
    return "".join(_ENCODER(obj, 0))


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


class _Database:
    """The SQLite side: used by one thread at a time (start-up, then the writer)."""

    def __init__(self, path: Path, max_events: int, max_age: float) -> None:
        self.max_events = max_events
        self.max_age = max_age
        db = self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        os.chmod(path, 0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta(key, value) "
            "VALUES ('version', ?), ('horizon', 0), ('applied', 0)",
            (SCHEMA_VERSION,),
        )
        self.applied = self._meta("applied")
        self.horizon = self._meta("horizon")
        self.seq = max(
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0],
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0],
        )
        self.event_count = _count_after(db, self.horizon)
        #: (first_ts, last_ts, count) of every journal row, oldest first: the
        #: trims after an apply read no row
        self.rows: deque[tuple[int, int, int]] = deque(
            db.execute("SELECT first_ts, last_ts, count FROM events ORDER BY last_ts")
        )
        self.age_due = True
        #: the ids the jobs table holds
        self.job_ids: set[str] = {row[0] for row in db.execute("SELECT id FROM jobs")}

    def _meta(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def snapshot(self) -> Snapshot:
        db = self.db
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
        last = db.execute("SELECT COALESCE(MAX(last_ts), 0) FROM events").fetchone()[0]
        return Snapshot(nodes, jobs, _ts(max(last, self.horizon)))

    def apply(self, batches: list[Batch]) -> None:
        """Apply logged batches not applied yet, in one transaction.

        :raise sqlite3.Error: nothing of them was applied.
        """
        batches = [b for b in batches if b[0] > self.applied]
        if not batches:
            return
        db = self.db
        seq = self.seq
        jobs: dict[str, list[Any] | None] = {}
        nodes: dict[str, str | None] = {}
        events: list[str] = []
        count = first = last = 0
        for batch in batches:
            _, job_rows, job_deletes, node_puts, node_deletes, batch_events = batch[:6]
            for name in node_deletes:
                nodes[name] = None
            for name, options in node_puts:
                nodes.pop(name, None)
                nodes[name] = json.dumps(options)
            for job_id in job_deletes:
                jobs[job_id] = None
            for row in job_rows:
                jobs[row[0]] = row
            if batch[8]:
                events.append(batch_events[1:-1])
                first = first or batch[6]
                last = batch[7]
                count += batch[8]
        db.execute("BEGIN")
        try:
            gone = [(k,) for k, v in nodes.items() if v is None]
            if gone:
                _execute_rows(db, "DELETE FROM nodes WHERE name IN ({})", "?", gone)
            for name, options in nodes.items():
                if options is not None:
                    seq += 1
                    db.execute(
                        "INSERT INTO nodes(name, seq, options) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET options = excluded.options",
                        (name, seq, options),
                    )
            # A job that came and went between two applies costs nothing.
            present = self.job_ids
            gone = [(k,) for k, v in jobs.items() if v is None and k in present]
            if gone:
                _execute_rows(db, "DELETE FROM jobs WHERE id IN ({})", "?", gone)
            rows = []
            for row in jobs.values():
                if row is not None:
                    seq += 1
                    rows.append((seq, *row[:-1], ",".join(row[-1])))
            if rows:
                _execute_rows(db, _PUT_JOBS, _JOB_VALUES, rows)
            if events:
                db.execute(
                    "INSERT INTO events(last_ts, first_ts, count, data) VALUES (?, ?, ?, ?)",
                    (last, first, count, "[" + ", ".join(events) + "]"),
                )
            applied = batches[-1][0]
            db.execute("UPDATE meta SET value = ? WHERE key = 'applied'", (applied,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.seq = seq
        self.applied = applied
        self.event_count += count
        if count:
            self.rows.append((first, last, count))
        for job_id, row in jobs.items():
            if row is None:
                present.discard(job_id)
            else:
                present.add(job_id)

    def prune(self, now: int, *, exact: bool = False) -> None:
        """Drop journaled events beyond the count and the age.

        Before a read, both limits apply exactly: the horizon (the newest
        dropped timestamp) may cut a row, which is then filtered when read.
        After an apply, only whole rows go, found by their counts and
        timestamps without decoding any (the writer thread holds the GIL
        while it decodes): the count is trimmed once it is a tenth over,
        down to at most one row over the limit; the age, once a second.
        """
        db = self.db
        horizon = self.horizon
        excess = self.event_count - self.max_events
        #: how many events are left after the horizon (None: count them)
        left: int | None = None
        if exact:
            if excess >= 1:
                horizon = _nth_after(db, horizon, excess)
        elif excess >= max(1, self.max_events // 10):
            horizon, dropped = self._whole_rows_after(excess)
            left = self.event_count - dropped
        if exact or self.age_due:
            self.age_due = False
            cutoff = now - int(self.max_age * 1e6)
            if cutoff > horizon:
                if exact:
                    older = list(_timestamps_after(db, horizon, below=cutoff))
                    if older:
                        horizon = older[-1]
                else:
                    older = [last for _, last, _ in self.rows if horizon < last < cutoff]
                    if older:
                        horizon, left = older[-1], None
        if horizon <= self.horizon:
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
        self.horizon = horizon
        self.event_count = _count_after(db, horizon) if left is None else left
        rows = self.rows
        while rows and rows[0][1] <= horizon:
            rows.popleft()

    def _whole_rows_after(self, n: int) -> tuple[int, int]:
        """The newest ``last_ts`` of the oldest rows after the horizon that
        hold at most ``n`` events between them (the horizon if the first row
        holds more), and how many events after the horizon they hold. Rows
        are read from :attr:`rows`; only a row the horizon cuts (after an
        exact trim) is decoded."""
        after = horizon = self.horizon
        dropped = 0
        for first_ts, last_ts, count in self.rows:
            if last_ts <= after:
                continue
            if first_ts <= after:
                (data,) = self.db.execute(
                    "SELECT data FROM events WHERE last_ts = ?", (last_ts,)
                ).fetchone()
                count = sum(1 for ts, *_ in json.loads(data) if ts > after)
            if count > n:
                break
            n -= count
            dropped += count
            horizon = last_ts
        return horizon, dropped

    def events_after(self, cursor: int) -> list[Event]:
        cursor = max(cursor, self.horizon)
        rows = self.db.execute(
            "SELECT data FROM events WHERE last_ts > ? ORDER BY last_ts", (cursor,)
        ).fetchall()
        return [
            Event(name, members, _ts(ts), 0)
            for (data,) in rows
            for ts, name, members in json.loads(data)
            if ts > cursor
        ]


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
        self._db: _Database | None = None
        self._lock_fd: int | None = None
        self._log_fd: int | None = None
        self._log_size = 0
        # pending changes: id -> record (None: delete), name -> options (None: delete)
        self._jobs: dict[str, Job | None] = {}
        #: A live job's record, built when it is logged (the recorder sets it).
        self.record_of: Callable[[Job], JobRecord] = record_of
        self._nodes: dict[str, Mapping[str, Any] | None] = {}
        #: events not yet logged, as published (encoded at commit)
        self._events: list[Event] = []
        self._seq = 0
        #: logged batches the writer thread has not applied yet
        self._queue: deque[Batch] = deque()
        self._writer: ThreadPoolExecutor | None = None
        self._applying = False
        self._apply_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._age_timer: asyncio.TimerHandle | None = None
        self._kick_timer: asyncio.TimerHandle | None = None
        #: Why the last write failed (None while writes succeed).
        self.error: str | None = None
        #: Commits that logged something (for tests).
        self.commits = 0

    # -- open / close --------------------------------------------------------

    def open(self) -> Snapshot:
        """Create or open the directory, lock it, replay the log, read the database.

        :raise ConfigError: ``--state-dir DIR: ...`` (locked by another
            daemon, not a directory, an unreadable database).
        """
        try:
            self._lock()
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
            db = self._db = _Database(self.path / DB_NAME, self.max_events, self.max_age)
            self._replay(db)
            self._seq = db.applied
            db.prune(_us(self._now()))
            snapshot = db.snapshot()
        except ConfigError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"--state-dir {self.path}: {_reason(exc)}") from None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="qmpjobd-ledger")
        self._arm_age_timer()
        return snapshot

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

    def _replay(self, db: _Database) -> None:
        """Apply what the log holds beyond the database, then empty the log."""
        fd = self._log_fd = os.open(
            self.path / LOG_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        batches: list[Batch] = []
        offset = 0
        while offset + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, offset)
            payload = data[offset + _FRAME.size : offset + _FRAME.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            head, _, text = payload.partition(b"\n")
            fields = json.loads(head)
            batches.append([*fields[:5], text.decode(), *fields[5:]])
            offset += _FRAME.size + length
        if offset < len(data):
            log.warning(
                "state directory: %s: a torn record at byte %d was dropped (%d bytes)",
                LOG_NAME,
                offset,
                len(data) - offset,
            )
        replayed = sum(1 for b in batches if b[0] > db.applied)
        db.apply(batches)
        if replayed:
            log.info("state directory: %d logged commit(s) replayed", replayed)
        os.ftruncate(fd, 0)

    def close(self) -> None:
        """Write and apply what is pending (if the disk lets us), close, unlock."""
        for handle in (self._retry, self._age_timer, self._kick_timer):
            if handle is not None:
                handle.cancel()
        self._retry = self._age_timer = self._kick_timer = None
        if self._db is not None and self._log_fd is not None:
            self.commit()
        if self._writer is not None:
            self._writer.submit(self._apply_queued).result()
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._log_fd is not None:
            if not self._queue and self._apply_error is None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._log_fd, 0)
            os.close(self._log_fd)
            self._log_fd = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- changes (on the event loop) -----------------------------------------

    def put_job(self, job: Job) -> None:
        """Record ``job`` as it will be at the next commit."""
        self._jobs[job.id] = job
        if not self._scheduled:
            self._schedule()

    def delete_job(self, job_id: str) -> None:
        self._jobs[job_id] = None
        if not self._scheduled:
            self._schedule()

    def put_node(self, name: str, options: Mapping[str, Any]) -> None:
        self._nodes.pop(name, None)
        self._nodes[name] = dict(options)
        if not self._scheduled:
            self._schedule()

    def delete_node(self, name: str) -> None:
        self._nodes[name] = None
        if not self._scheduled:
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

    # -- commit: one write to the log ----------------------------------------

    def commit(self) -> bool:
        """Log every pending change with one write; False if it failed."""
        fd = self._log_fd
        jobs, nodes, events = self._jobs, self._nodes, self._events
        if fd is None or not (jobs or nodes or events):
            return self.error is None
        seq = self._seq + 1
        if jobs:
            record_of = self.record_of
            job_rows = [record_of(j) for j in jobs.values() if j is not None]
            job_deletes = [k for k, j in jobs.items() if j is None]
        else:
            job_rows, job_deletes = [], []
        if nodes:
            node_puts = [[k, o] for k, o in nodes.items() if o is not None]
            node_deletes = [k for k, o in nodes.items() if o is None]
        else:
            node_puts, node_deletes = [], []
        if events:
            first, last = events[0].timestamp, events[-1].timestamp
            first_us = first[0] * 1_000_000 + first[1]
            last_us = last[0] * 1_000_000 + last[1]
            text = _json(
                [[e.timestamp[0] * 1_000_000 + e.timestamp[1], e.name, e.data] for e in events]
            )
        else:
            first_us = last_us = 0
            text = "[]"
        head = [seq, job_rows, job_deletes, node_puts, node_deletes, first_us, last_us, len(events)]
        # The events' text goes after the rest, as it is (not escaped again).
        payload = f"{_json(head)}\n{text}".encode()
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            written = os.write(fd, frame)
            if written != len(frame):
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            # Leave no torn record behind: later records must stay readable.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._log_size)
            self._failed(LOG_NAME, _reason(exc))
            return False
        self._log_size += len(frame)
        self._seq = seq
        self._jobs, self._nodes, self._events = {}, {}, []
        self.commits += 1
        if self.error is not None and self._apply_error is None:
            log.warning("state directory: writing again")
            self.error = None
        head.insert(5, text)
        self._queue.append(head)
        if not self._applying and self._kick_timer is None and self._loop is not None:
            # Let changes gather: the writer applies them in larger transactions.
            self._kick_timer = self._loop.call_later(APPLY_DELAY, self._kick)
        return True

    def _failed(self, name: str, reason: str) -> None:
        if self.error != reason:
            log.error("state directory: cannot write %s: %s", self.path / name, reason)
        self.error = reason
        if self._retry is None and self._loop is not None:
            self._retry = self._loop.call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self.dirty:
            self.commit()
        if self._queue and not self._applying:
            self._kick()

    # -- the writer thread ---------------------------------------------------

    def _kick(self) -> None:
        if self._kick_timer is not None:
            self._kick_timer.cancel()
            self._kick_timer = None
        writer, loop = self._writer, self._loop
        if writer is None or loop is None:
            return
        self._applying = True
        future = writer.submit(self._apply_queued)
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._applied, f) if not loop.is_closed() else None
        )

    def _apply_queued(self) -> str | None:
        """(Writer thread.) Apply the batches queued so far, in one transaction;
        the failure's reason, if any.

        One round only: what the loop logs meanwhile waits for the next round
        (:data:`APPLY_DELAY` later), so that under a steady load the thread
        applies large transactions instead of chasing every commit.
        """
        db = self._db
        queue = self._queue
        if db is None or not queue:
            return None
        batches = [queue.popleft() for _ in range(len(queue))]
        try:
            db.apply(batches)
        except sqlite3.Error as exc:
            queue.extendleft(reversed(batches))
            return _reason(exc)
        db.prune(_us(self._now()))
        return None

    def _applied(self, future: Future[str | None]) -> None:
        """(Event loop.) The writer thread is done with a round."""
        self._applying = False
        try:
            failure = future.result()
        except Exception as exc:  # a bug: keep the batches, say so
            log.exception("state directory: the writer failed")
            failure = str(exc)
        self._apply_error = failure
        if failure is not None:
            self._failed(DB_NAME, failure)
            return
        if self.error is not None and not self.dirty:
            log.warning("state directory: writing again")
            self.error = None
        if self._queue:
            if self._kick_timer is None and self._loop is not None:
                self._kick_timer = self._loop.call_later(APPLY_DELAY, self._kick)
        elif self._log_size > LOG_LIMIT and self._log_fd is not None:
            # Everything logged is in the database: start the log afresh.
            os.ftruncate(self._log_fd, 0)
            self._log_size = 0

    def _arm_age_timer(self) -> None:
        if self._loop is not None and self._db is not None:
            self._age_timer = self._loop.call_later(1.0, self._age_tick)

    def _age_tick(self) -> None:
        """Once a second: the writer applies the age limit at its next round."""
        if self._db is not None:
            self._db.age_due = True
        self._arm_age_timer()

    # -- reading the journal -------------------------------------------------

    async def events_after(self, since: tuple[int, int]) -> tuple[list[Event], int]:
        """Journaled events after ``since``, oldest first, and the horizon
        (the newest timestamp retention dropped, in µs)."""
        self.commit()
        writer, db = self._writer, self._db
        if writer is None or db is None:
            return [], 0
        cursor = _us(since)

        def read() -> tuple[list[Event], int]:
            self._apply_queued()
            db.prune(_us(self._now()), exact=True)
            return db.events_after(cursor), db.horizon

        events, horizon = await asyncio.get_running_loop().run_in_executor(writer, read)
        # What could not be written yet (a full disk) is still in memory.
        events += [e for e in self._events if _us(e.timestamp) > max(cursor, horizon)]
        return events, horizon


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


def _nth_after(db: sqlite3.Connection, after: int, n: int) -> int:
    """The timestamp of the ``n``-th journaled event after ``after`` (n >= 1);
    rows are skipped by their counts, only the row it falls in is decoded."""
    rows = db.execute(
        "SELECT first_ts, count, data FROM events WHERE last_ts > ? ORDER BY last_ts", (after,)
    )
    for first_ts, count, data in rows:
        if first_ts > after and count < n:
            n -= count
            continue
        stamps = [ts for ts, _name, _data in json.loads(data) if ts > after]
        if len(stamps) < n:
            n -= len(stamps)
            continue
        return int(stamps[n - 1])
    return after


def _execute_rows(
    db: sqlite3.Connection, sql: str, values: str, rows: list[tuple[Any, ...]]
) -> None:
    """``sql`` with its ``{}`` filled by ``values`` once per row, for every
    :data:`ROWS_PER_STATEMENT` rows (an ``executemany`` in a few calls)."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        db.execute(sql.format(", ".join([values] * len(chunk))), [v for r in chunk for v in r])


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
