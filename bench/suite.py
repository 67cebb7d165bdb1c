"""The benchmarks. Each runs every target in turn, round after round, so that
the targets share the machine's conditions; medians and ranges come from the
rounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import jobs as J
from .client import AsyncQMP, SyncQMP, command_bytes
from .model import Goal, Results
from .stats import percentile
from .targets import Running, TargetSpec, start

MiB = 1024 * 1024
BACKUP = "blockdev-backup"
MIRROR = "blockdev-mirror"


@dataclass
class Params:
    mode: str  # "smoke" | "quick" | "full"
    rounds: int
    rt_samples: int
    qmp_lib_samples: int
    pipeline: int
    connects: int
    fanout_ks: tuple[int, ...]
    fanout_jobs: int
    deliveries_jobs: int
    churn_jobs: int
    copy_bytes: int
    rate_window: float
    rates_mib: tuple[int, ...]
    mem_monitors: int
    mem_nodes: int
    mem_jobs: int
    scale_jobs: int
    scale_monitors: int

    @classmethod
    def for_mode(cls, mode: str) -> Params:
        if mode == "smoke":
            return cls(
                mode,
                1,
                50,
                20,
                500,
                10,
                (1, 10),
                2,
                5,
                5,
                8 * MiB,
                0.3,
                (10, 50, 200),
                20,
                20,
                5,
                20,
                20,
            )
        if mode == "quick":
            return cls(
                mode,
                2,
                500,
                200,
                5000,
                100,
                (1, 10, 100),
                5,
                50,
                200,
                128 * MiB,
                0.6,
                (10, 50, 200),
                200,
                500,
                100,
                1000,
                200,
            )
        return cls(
            mode,
            3,
            2000,
            500,
            20000,
            300,
            (1, 10, 100, 1000),
            10,
            200,
            1000,
            1024 * MiB,
            1.5,
            (10, 50, 200),
            1000,
            1000,
            500,
            10000,
            1000,
        )


class Ctx:
    def __init__(
        self,
        targets: list[TargetSpec],
        params: Params,
        results: Results,
        log: Callable[[str], None],
    ) -> None:
        self.targets = targets
        self.p = params
        self.results = results
        self.log = log

    @contextlib.contextmanager
    def servers(self, monitors: int = 1) -> Iterator[list[tuple[TargetSpec, Running | None, str]]]:
        """Start every target; yield (spec, running or None, why not)."""
        out: list[tuple[TargetSpec, Running | None, str]] = []
        try:
            for spec in self.targets:
                why = spec.available()
                if why:
                    out.append((spec, None, why))
                    continue
                try:
                    out.append((spec, start(spec, monitors), ""))
                except Exception as exc:
                    out.append((spec, None, f"could not start: {exc}"))
            yield out
        finally:
            for _, run, _ in out:
                if run is not None:
                    run.stop()


def _rt(conn: SyncQMP, data: bytes, n: int) -> list[float]:
    out = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        conn.raw_round_trip(data)
        out.append((pc() - t0) / 1000)
    return out


# 1 -------------------------------------------------------------------------


def bench_round_trip(ctx: Ctx) -> None:
    S = "1. Round trip (one connection, sequential)"
    R = ctx.results
    rel = Goal("<=", 0.6)
    names = [
        ("query-jobs p50", rel),
        ("query-jobs p99", None),
        ("query-version p50", rel),
        ("query-version p99", None),
        ("qemu.qmp query-version p50", None),
        ("qemu.qmp query-version p99", None),
    ]
    for n, g in names:
        R.metric(S, n, "µs", g)
    with ctx.servers() as servers:
        for _ in range(ctx.p.rounds):
            for spec, run, why in servers:
                if run is None:
                    for n, _ in names:
                        R.metric(S, n, "µs").skip(spec.name, why)
                    continue
                conn = SyncQMP(run.sock())
                for cmd in ("query-jobs", "query-version"):
                    data = command_bytes(cmd)
                    _rt(conn, data, min(200, ctx.p.rt_samples))
                    samples = _rt(conn, data, ctx.p.rt_samples)
                    R.metric(S, f"{cmd} p50", "µs").add(spec.name, percentile(samples, 50))
                    R.metric(S, f"{cmd} p99", "µs").add(spec.name, percentile(samples, 99))
                conn.close()
                lib = _qemu_qmp_round_trips(run.sock(), ctx.p.qmp_lib_samples)
                if lib is None:
                    for n in ("p50", "p99"):
                        R.metric(S, f"qemu.qmp query-version {n}", "µs").skip(
                            spec.name, "qemu.qmp not installed"
                        )
                else:
                    R.metric(S, "qemu.qmp query-version p50", "µs").add(
                        spec.name, percentile(lib, 50)
                    )
                    R.metric(S, "qemu.qmp query-version p99", "µs").add(
                        spec.name, percentile(lib, 99)
                    )


def _qemu_qmp_round_trips(path: str, n: int) -> list[float] | None:
    try:
        from qemu.qmp import QMPClient
    except ImportError:
        return None

    async def go() -> list[float]:
        client = QMPClient("bench")
        await client.connect(path)
        try:
            for _ in range(min(50, n)):
                await client.execute("query-version")
            out = []
            pc = time.perf_counter_ns
            for _ in range(n):
                t0 = pc()
                await client.execute("query-version")
                out.append((pc() - t0) / 1000)
            return out
        finally:
            await client.disconnect()

    return asyncio.run(go())


# 2 -------------------------------------------------------------------------


def pipelined_rate(path: str, n: int) -> float:
    conn = SyncQMP(path)
    blob = command_bytes("query-jobs") * n
    writer = threading.Thread(target=conn.sock.sendall, args=(blob,))
    t0 = time.perf_counter()
    writer.start()
    got = 0
    buf = b""
    sock = conn.sock
    while got < n:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk.count(b"\n")
    elapsed = time.perf_counter() - t0
    writer.join()
    del buf
    conn.close()
    return n / elapsed


def bench_pipelined(ctx: Ctx) -> None:
    S = "2. Pipelined throughput"
    name = f"{ctx.p.pipeline} query-jobs written at once"
    m = ctx.results.metric(S, name, "replies/s", Goal(">=", 10))
    with ctx.servers() as servers:
        for _ in range(ctx.p.rounds):
            for spec, run, why in servers:
                if run is None:
                    m.skip(spec.name, why)
                    continue
                m.add(spec.name, pipelined_rate(run.sock(), ctx.p.pipeline))


# 3 -------------------------------------------------------------------------


def bench_connect(ctx: Ctx) -> None:
    S = "3. Connect → greeting → negotiated"
    R = ctx.results
    for n in ("p50", "p99"):
        R.metric(S, n, "µs")
    with ctx.servers(monitors=8) as servers:
        for _ in range(ctx.p.rounds):
            for spec, run, why in servers:
                if run is None:
                    for n in ("p50", "p99"):
                        R.metric(S, n, "µs").skip(spec.name, why)
                    continue
                samples = []
                for i in range(ctx.p.connects):
                    t0 = time.perf_counter_ns()
                    conn = SyncQMP(run.sock(i))
                    samples.append((time.perf_counter_ns() - t0) / 1000)
                    conn.close()
                R.metric(S, "p50", "µs").add(spec.name, percentile(samples, 50))
                R.metric(S, "p99", "µs").add(spec.name, percentile(samples, 99))


# 4 -------------------------------------------------------------------------


class _Arrivals:
    def __init__(self) -> None:
        self.last: dict[bytes, float] = {}
        self.count = 0
        self.latest = 0.0

        self._want = 0
        self._reached: asyncio.Event | None = None

    async def wait_for(self, count: int, timeout: float) -> None:
        """Until *count* events have arrived in all (or *timeout* passes)."""
        if self.count >= count:
            return
        self._want = count
        self._reached = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reached.wait(), timeout)
        self._reached = None

    def __call__(self, conn: AsyncQMP, now: float, line: bytes) -> None:
        self.count += 1
        self.latest = now
        if self._reached is not None and self.count >= self._want:
            self._reached.set()
        prev = self.last.get(line)
        if prev is None or now > prev:
            self.last[line] = now


async def _connect_many(path_of: Callable[[int], str], k: int, on_event: Any) -> list[AsyncQMP]:
    conns: list[AsyncQMP] = []
    for start_i in range(0, k, 100):
        conns += await asyncio.gather(
            *(
                AsyncQMP.open(path_of(i), on_event=on_event)
                for i in range(start_i, min(k, start_i + 100))
            )
        )
    return conns


_unique = iter(range(1 << 62))


async def _fanout_round(
    run: Running, k: int, jobs: int, deliveries_jobs: int
) -> tuple[list[float], float | None]:
    u = f"f{next(_unique)}"
    arrivals = _Arrivals()
    watcher = J.JobWatcher()

    def on_event(conn: AsyncQMP, now: float, line: bytes) -> None:
        arrivals(conn, now, line)
        if conn is ctrl_box[0]:
            watcher(conn, now, line)

    ctrl_box: list[AsyncQMP | None] = [None]
    conns = await _connect_many(run.sock, k, on_event)
    ctrl = conns[0]
    ctrl_box[0] = ctrl
    try:
        flight = 10
        for i in range(flight):
            for node in (f"{u}s{i}", f"{u}t{i}"):
                await ctrl.execute("blockdev-add", J.null_node(node, J.SHORT_JOB_BYTES))
        # Delay to the last monitor: one job at a time.
        for j in range(jobs):
            await J.run_job(ctrl, watcher, f"{u}j{j}", f"{u}s0", f"{u}t0")
        await asyncio.sleep(0.05)
        delays = []
        for line, last in arrivals.last.items():
            ts = json.loads(line)["timestamp"]
            delays.append((last - (ts["seconds"] + ts["microseconds"] / 1e6)) * 1e6)
        rate = None
        if deliveries_jobs:
            arrivals.count = 0
            expected_per_job = len(arrivals.last) // max(1, jobs)
            t0 = time.time()

            async def lane(i: int) -> None:
                for j in range(i, deliveries_jobs, flight):
                    await J.run_job(ctrl, watcher, f"{u}d{j}", f"{u}s{i}", f"{u}t{i}")

            await asyncio.gather(*(lane(i) for i in range(flight)))
            want = expected_per_job * deliveries_jobs * k
            await arrivals.wait_for(want, 30)
            rate = arrivals.count / (arrivals.latest - t0)
        return delays, rate
    finally:
        for c in conns:
            c.close()
        await asyncio.sleep(0.01)


def bench_fanout(ctx: Ctx) -> None:
    S = "4. Event fan-out"
    R = ctx.results
    ks = ctx.p.fanout_ks
    for k in ks:
        R.metric(
            S, f"delay to last of {k} monitors p50", "µs", Goal("<=", 1.0) if k == 100 else None
        )
        R.metric(S, f"delay to last of {k} monitors p99", "µs")
    dk = 100 if 100 in ks else ks[-1]
    dname = f"deliveries/s, {dk} monitors, short jobs 10 in flight"
    R.metric(S, dname, "events/s", Goal(">=", 4) if dk == 100 else None)
    with ctx.servers(monitors=max(ks)) as servers:
        for _ in range(ctx.p.rounds):
            for spec, run, why in servers:
                if run is not None and not run.has(BACKUP):
                    why = f"not available: no {BACKUP} yet"
                if run is None or why:
                    for k in ks:
                        R.metric(S, f"delay to last of {k} monitors p50", "µs").skip(spec.name, why)
                        R.metric(S, f"delay to last of {k} monitors p99", "µs").skip(spec.name, why)
                    R.metric(S, dname, "events/s").skip(spec.name, why)
                    continue
                for k in ks:
                    dj = ctx.p.deliveries_jobs if k == dk else 0
                    delays, rate = asyncio.run(_fanout_round(run, k, ctx.p.fanout_jobs, dj))
                    R.metric(S, f"delay to last of {k} monitors p50", "µs").add(
                        spec.name, percentile(delays, 50)
                    )
                    R.metric(S, f"delay to last of {k} monitors p99", "µs").add(
                        spec.name, percentile(delays, 99)
                    )
                    if rate is not None:
                        R.metric(S, dname, "events/s").add(spec.name, rate)


# 5 -------------------------------------------------------------------------


class _Probe:
    """query-jobs round trips on a connection of its own, from a thread, while
    another load runs: the latency a monitor sees meanwhile."""

    def __init__(self, sock: str, pause: float = 0.002) -> None:
        self.samples: list[float] = []
        self._conn = SyncQMP(sock)
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        data = command_bytes("query-jobs")
        while not self._stop.is_set():
            self.samples.extend(_rt(self._conn, data, 1))
            time.sleep(self._pause)

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


async def _churn(run: Running, n: int, flight: int, prefix: str) -> float:
    watcher = J.JobWatcher()
    ctrl = await AsyncQMP.open(run.sock(), on_event=watcher)
    try:
        for i in range(flight):
            for node in (f"{prefix}s{i}", f"{prefix}t{i}"):
                await ctrl.execute("blockdev-add", J.null_node(node, J.SHORT_JOB_BYTES))
        t0 = time.perf_counter()

        async def lane(i: int) -> None:
            for j in range(i, n, flight):
                await J.run_job(ctrl, watcher, f"{prefix}j{j}", f"{prefix}s{i}", f"{prefix}t{i}")

        await asyncio.gather(*(lane(i) for i in range(flight)))
        return n / (time.perf_counter() - t0)
    finally:
        ctrl.close()


def bench_churn(ctx: Ctx) -> None:
    S = f"5. Job churn ({ctx.p.churn_jobs} backups of null-co, create → concluded → dismissed)"
    R = ctx.results
    rows = [
        ("sequential", "jobs/s", Goal(">=", 3)),
        ("50 in flight", "jobs/s", Goal(">=", 5)),
        ("query-jobs p99 during churn (50 in flight)", "µs", None),
        ("server RSS after churn", "KiB", None),
    ]
    for n, u, g in rows:
        R.metric(S, n, u, g)
    with ctx.servers() as servers:
        for r in range(ctx.p.rounds):
            for spec, run, why in servers:
                if run is not None and not run.has(BACKUP):
                    why = f"not available: no {BACKUP} yet"
                if run is None or why:
                    for n, u, _ in rows:
                        R.metric(S, n, u).skip(spec.name, why)
                    continue
                R.metric(S, "sequential", "jobs/s").add(
                    spec.name, asyncio.run(_churn(run, ctx.p.churn_jobs, 1, f"c{r}q"))
                )
                with _Probe(run.sock()) as probe:
                    rate = asyncio.run(_churn(run, ctx.p.churn_jobs, 50, f"c{r}p"))
                R.metric(S, "50 in flight", "jobs/s").add(spec.name, rate)
                if probe.samples:
                    R.metric(S, "query-jobs p99 during churn (50 in flight)", "µs").add(
                        spec.name, percentile(probe.samples, 99)
                    )
                rss = run.rss_kib()
                if rss is not None:
                    R.metric(S, "server RSS after churn", "KiB").add(spec.name, rss)


# 6 -------------------------------------------------------------------------


def _drop_caches(paths: list[str]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for p in paths:
            with contextlib.suppress(OSError):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "posix_fadvise(DONTNEED)"


def _make_source(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def _fresh(path: str) -> None:
    """Remove *path* and sync: what an earlier copy left dirty, and freeing
    its blocks (a discard, on some file systems), are not the next copy's."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.sync()


def _timed(argv: list[str], dst: str) -> float:
    _fresh(dst)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _backup_file(
    run: Running, src: str, dst: str, size: int, *, fsync: bool, probe: list[float] | None = None
) -> float:
    _fresh(dst)
    with open(dst, "wb") as f:
        f.truncate(size)
    conn = SyncQMP(run.sock(0))
    try:
        conn.execute(
            "blockdev-add",
            {"driver": "file", "node-name": "csrc", "filename": src, "read-only": True},
        )
        conn.execute("blockdev-add", {"driver": "file", "node-name": "cdst", "filename": dst})
        stop = threading.Event()
        prober = None
        if probe is not None:
            pconn = SyncQMP(run.sock(1))
            data = command_bytes("query-jobs")

            def loop() -> None:
                while not stop.is_set():
                    probe.extend(_rt(pconn, data, 1))
                    time.sleep(0.001)

            prober = threading.Thread(target=loop)
        t0 = time.perf_counter()
        conn.sock.sendall(command_bytes(BACKUP, J.backup_args("copy", "csrc", "cdst")))
        if prober is not None:
            prober.start()
        conn.reply()
        J.wait_job_gone_sync(conn, "copy")
        if fsync:
            # Closing a file node flushes it: QEMU's bdrv_close() and qmpjobd alike.
            conn.execute("blockdev-del", {"node-name": "cdst"})
        elapsed = time.perf_counter() - t0
        stop.set()
        if prober is not None:
            prober.join()
            pconn.close()
        if not fsync:
            conn.execute("blockdev-del", {"node-name": "cdst"})
        conn.execute("blockdev-del", {"node-name": "csrc"})
        return elapsed
    finally:
        conn.close()


def bench_copy(ctx: Ctx) -> None:
    size = ctx.p.copy_bytes
    S = f"6. Copy a {size // MiB} MiB raw file to another file"
    R = ctx.results
    rows = [
        ("backup, warm cache", "s", Goal("<=", 0.8)),
        ("backup + fsync, warm cache", "s", Goal("<=", 0.8)),
        ("backup, cold cache", "s", Goal("<=", 0.8)),
        ("backup + fsync, cold cache", "s", Goal("<=", 0.8)),
        ("cp, warm cache", "s", None),
        ("cp, cold cache", "s", None),
        ("dd conv=fsync, warm cache", "s", None),
        ("dd conv=fsync, cold cache", "s", None),
        ("backup + fsync ÷ dd conv=fsync (warm)", "×", Goal("<=", 1.0, relative=False)),  # noqa: RUF001
        ("backup + fsync ÷ dd conv=fsync (cold)", "×", Goal("<=", 1.0, relative=False)),  # noqa: RUF001
        ("query-jobs p99 during the copy", "µs", Goal("<=", 1.0)),
    ]
    for n, u, g in rows:
        R.metric(S, n, u, g)
    workdir = tempfile.mkdtemp(prefix="qmpbench-copy-", dir=os.environ.get("BENCH_DIR"))
    src = os.path.join(workdir, "src.raw")
    dst = os.path.join(workdir, "dst.raw")
    try:
        _make_source(src, size)
        with ctx.servers(monitors=2) as servers:
            for _ in range(max(1, ctx.p.rounds - 2)):
                for spec, run, why in servers:
                    if run is not None and not run.has(BACKUP):
                        why = f"not available: no {BACKUP} yet"
                    if run is None or why:
                        for n, u, _ in rows:
                            R.metric(S, n, u).skip(spec.name, why)
                        continue

                    def add(n: str, v: float, _spec: TargetSpec = spec) -> None:
                        R.metric(S, n, "").add(_spec.name, v)

                    with open(src, "rb") as f:  # warm the source
                        while f.read(8 * MiB):
                            pass
                    add("backup, warm cache", _backup_file(run, src, dst, size, fsync=False))
                    add("backup + fsync, warm cache", _backup_file(run, src, dst, size, fsync=True))
                    add("cp, warm cache", _timed(["cp", src, dst], dst))
                    add(
                        "dd conv=fsync, warm cache",
                        _timed(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"], dst),
                    )
                    how = _drop_caches([src, dst])
                    add("backup, cold cache", _backup_file(run, src, dst, size, fsync=False))
                    _drop_caches([src, dst])
                    add("backup + fsync, cold cache", _backup_file(run, src, dst, size, fsync=True))
                    _drop_caches([src, dst])
                    add("cp, cold cache", _timed(["cp", src, dst], dst))
                    _drop_caches([src, dst])
                    add(
                        "dd conv=fsync, cold cache",
                        _timed(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"], dst),
                    )
                    for cache in ("warm", "cold"):
                        m = R.metric(S, f"backup + fsync, {cache} cache", "")
                        d = R.metric(S, f"dd conv=fsync, {cache} cache", "")
                        add(
                            f"backup + fsync ÷ dd conv=fsync ({cache})",
                            m.values[spec.name][-1] / d.values[spec.name][-1],
                        )
                    probe: list[float] = []
                    _backup_file(run, src, dst, size, fsync=False, probe=probe)
                    if probe:
                        add("query-jobs p99 during the copy", percentile(probe, 99))
                    R.note(f"Cold cache: {how} before each cold copy.")
                    R.note(
                        "Copy: 'backup + fsync' is the time from blockdev-backup to a durable "
                        "target (the job's end, then blockdev-del, which flushes the target); "
                        "every copy goes to a new file, after a sync, so none writes back or frees "
                        "another's data."
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# 7 -------------------------------------------------------------------------


def _offset(conn: SyncQMP, job: str) -> tuple[float, int]:
    t = time.perf_counter()
    for info in conn.execute("query-block-jobs"):
        if info["device"] == job:
            return t, info["offset"]
    raise RuntimeError(f"job {job} is gone")


def _measured_rate(conn: SyncQMP, job: str, window: float) -> float:
    """Bytes per second between the first and the last offset change seen in
    *window*: progress comes in bursts (chunks, rate-limit slices), so
    measuring from change to change keeps the burst size out of the result."""
    t_end = time.perf_counter() + window
    _, last = _offset(conn, job)
    changes: list[tuple[float, int]] = []
    while time.perf_counter() < t_end:
        t, o = _offset(conn, job)
        if o != last:
            changes.append((t, o))
            last = o
        time.sleep(0.002)
    if len(changes) < 2:
        return float("nan")
    (t0, o0), (t1, o1) = changes[0], changes[-1]
    return (o1 - o0) / (t1 - t0)


def _window_rate(samples: list[tuple[float, int]], window: float) -> float:
    t1, o1 = samples[-1]
    for t0, o0 in reversed(samples):
        if t1 - t0 >= window:
            return (o1 - o0) / (t1 - t0)
    t0, o0 = samples[0]
    return (o1 - o0) / (t1 - t0) if t1 > t0 else 0.0


def _speed_change(conn: SyncQMP, job: str, new: int, up: bool) -> float:
    conn.execute("block-job-set-speed", {"device": job, "speed": new})
    t0 = time.perf_counter()
    samples = [_offset(conn, job)]
    while time.perf_counter() - t0 < 3:
        time.sleep(0.005)
        samples.append(_offset(conn, job))
        if samples[-1][0] - t0 < 0.1:
            continue
        rate = _window_rate(samples, 0.1)
        if (up and rate >= 0.5 * new) or (not up and rate <= 2 * new):
            return (samples[-1][0] - t0) * 1000
    return float("nan")


def bench_rate(ctx: Ctx) -> None:
    S = "7. Rate limiting (backup of null-co, speed set at start)"
    R = ctx.results
    acc = Goal(">=", 98, relative=False)
    rows: list[tuple[str, str, Goal | None]] = [
        (f"accuracy at {s} MiB/s", "%", acc) for s in ctx.p.rates_mib
    ]
    rows += [
        ("set-speed 10 → 200 MiB/s takes effect", "ms", None),
        ("set-speed 200 → 10 MiB/s takes effect", "ms", None),
    ]
    for n, u, g in rows:
        R.metric(S, n, u, g)
    R.note(
        "Rate limiting: accuracy = 100 × (1 − |achieved − set| ÷ set) over the window; "  # noqa: RUF001
        "'takes effect' = time from the set-speed reply until the rate over the last "
        "100 ms passes half the new speed (up) or falls below twice it (down)."
    )
    with ctx.servers() as servers:
        for r in range(max(1, ctx.p.rounds - 1)):
            for spec, run, why in servers:
                if run is not None and not run.has(BACKUP):
                    why = f"not available: no {BACKUP} yet"
                if run is None or why:
                    for n, u, _ in rows:
                        R.metric(S, n, u).skip(spec.name, why)
                    continue
                conn = SyncQMP(run.sock())
                big = 1 << 40
                for node in (f"r{r}s", f"r{r}t"):
                    conn.execute("blockdev-add", J.null_node(node, big))
                for s in ctx.p.rates_mib:
                    job = f"r{r}j{s}"
                    conn.execute(BACKUP, J.backup_args(job, f"r{r}s", f"r{r}t", s * MiB))
                    time.sleep(min(0.3, ctx.p.rate_window / 2))
                    achieved = _measured_rate(conn, job, ctx.p.rate_window)
                    R.metric(S, f"accuracy at {s} MiB/s", "%").add(
                        spec.name, 100 * (1 - abs(achieved - s * MiB) / (s * MiB))
                    )
                    if s == ctx.p.rates_mib[0]:
                        R.metric(S, "set-speed 10 → 200 MiB/s takes effect", "ms").add(
                            spec.name, _speed_change(conn, job, 200 * MiB, True)
                        )
                        R.metric(S, "set-speed 200 → 10 MiB/s takes effect", "ms").add(
                            spec.name, _speed_change(conn, job, 10 * MiB, False)
                        )
                    conn.execute("block-job-cancel", {"device": job, "force": True})
                    J.wait_job_gone_sync(conn, job)
                conn.close()


# 8 -------------------------------------------------------------------------

QEMU_MAX_JOBS = 100
#: Long-running jobs for the memory and scale benchmarks: a mirror of a 1 GiB
#: null-co node (zeroes) to another, 64 KiB/s. Mirrors, unlike backups, do not
#: drain the running jobs when they start, so starting N of them emits 2N events,
#: not ~N². At this speed a mirror stays in its copy phase for hours (QEMU lets a
#: first burst of 16 MiB through), so every job is running and not ready.
LONG_JOB_BYTES = 1 << 30
LONG_JOB_SPEED = 64 * 1024


def _job_cap(spec: TargetSpec, n: int) -> int:
    return min(n, QEMU_MAX_JOBS) if spec.kind == "qemu" else n


def _long_job_nodes(conn: SyncQMP, prefix: str, n: int) -> list[tuple[str, str]]:
    return J.add_null_pairs(conn, prefix, n, LONG_JOB_BYTES, read_zeroes=True)


def _start_long_jobs(
    conn: SyncQMP,
    prefix: str,
    pairs: list[tuple[str, str]],
    log: Callable[[str], None] | None = None,
) -> float:
    """Start a rate-limited mirror, job *prefix*N, on each pair (1,000 commands
    at a time, replies and events read as they come); return the seconds it took."""
    msgs = [
        command_bytes(MIRROR, J.mirror_args(f"{prefix}{i}", s, t, LONG_JOB_SPEED))
        for i, (s, t) in enumerate(pairs)
    ]
    keep, conn.keep_events = conn.keep_events, False
    try:
        t0 = time.perf_counter()
        lap = t0
        laps = []
        for i in range(0, len(msgs), 1000):
            J.pipelined(conn, msgs[i : i + 1000])
            now = time.perf_counter()
            laps.append(f"{now - lap:.2f}")
            lap = now
        if log is not None:
            log(f"{prefix}: seconds per 1,000 job starts: {' '.join(laps)}")
        return time.perf_counter() - t0
    finally:
        conn.keep_events = keep


def _all_copying(conn: SyncQMP, prefix: str, n: int) -> str:
    """'' if all *n* jobs named *prefix*N are running and not ready, else what is not."""
    jobs = [j for j in conn.execute("query-block-jobs") if j["device"].startswith(prefix)]
    bad = [j for j in jobs if j["status"] != "running" or j["ready"]]
    if len(jobs) != n or bad:
        return f"{len(jobs)} of {n} jobs listed, {len(bad)} not running or ready"
    return ""


def _settle_rss(run: Running) -> float:
    time.sleep(0.2)
    return float(run.rss_kib() or 0)


def bench_memory(ctx: Ctx) -> None:
    S = "8. Memory (VmRSS)"
    R = ctx.results
    M, N, JN = ctx.p.mem_monitors, ctx.p.mem_nodes, ctx.p.mem_jobs
    R.note(
        f"QEMU runs at most {QEMU_MAX_JOBS} rate-limited mirrors in the memory and scale "
        "benchmarks: started with 1,001 monitor sockets (one per monitor, as the benchmarks "
        "need), qemu-storage-daemon takes about 25 ms per command (200 blockdev-adds: 5 s), "
        "so 1,000 mirrors (3,000 commands) would take over 75 s; each mirror also holds "
        "about 1 MiB. Without the extra monitors, 1,000 mirrors started in 21 s."
    )
    rows = [
        ("idle", "KiB", None),
        (f"per connected monitor ({M} connected)", "KiB", Goal("<=", 16, relative=False)),
        (f"per null-co node ({N} added)", "KiB", None),
        (
            f"per running job ({JN} rate-limited mirrors; QEMU: {min(JN, QEMU_MAX_JOBS)})",
            "KiB",
            Goal("<=", 32, relative=False),
        ),
    ]
    for n, u, g in rows:
        R.metric(S, n, u, g)
    sub = Ctx(ctx.targets, ctx.p, ctx.results, ctx.log)
    with sub.servers(monitors=M + 1) as servers:
        for spec, run, why in servers:
            if run is None or run.pid is None:
                for n, u, _ in rows:
                    R.metric(S, n, u).skip(spec.name, why or "server pid unknown")
                continue
            idle = _settle_rss(run)
            R.metric(S, "idle", "KiB").add(spec.name, idle)

            async def monitors(_run: Running = run) -> float:
                conns = await _connect_many(_run.monitor_after_first, M, None)
                after = _settle_rss(_run)
                for c in conns:
                    c.close()
                await asyncio.sleep(0.2)
                return after

            after = asyncio.run(monitors())
            R.metric(S, rows[1][0], "KiB").add(spec.name, (after - idle) / M)
            conn = SyncQMP(run.sock(0), timeout=300)
            before = _settle_rss(run)
            J.pipelined(
                conn,
                [command_bytes("blockdev-add", J.null_node(f"mn{i}", 1 << 30)) for i in range(N)],
            )
            R.metric(S, rows[2][0], "KiB").add(spec.name, (_settle_rss(run) - before) / N)
            if not run.has(MIRROR):
                R.metric(S, rows[3][0], "KiB").skip(spec.name, f"not available: no {MIRROR} yet")
            else:
                # Nodes first, then the RSS, then the jobs: the row counts the jobs alone.
                jn = _job_cap(spec, JN)
                pairs = _long_job_nodes(conn, "mj", jn)
                before = _settle_rss(run)
                _start_long_jobs(conn, "mj", pairs)
                R.metric(S, rows[3][0], "KiB").add(spec.name, (_settle_rss(run) - before) / jn)
                bad = _all_copying(conn, "mj", jn)
                if bad:
                    ctx.log(f"memory: {spec.name}: {bad}")
            conn.close()


# 9 -------------------------------------------------------------------------


def bench_scale(ctx: Ctx) -> None:
    M, JN = ctx.p.scale_monitors, ctx.p.scale_jobs
    S = f"9. Scale ({JN} rate-limited mirrors, {M} monitors)"
    R = ctx.results
    cap = min(JN, QEMU_MAX_JOBS)
    rows = [
        (f"time to start the jobs (QEMU: {cap})", "s", None),
        ("RSS per job at scale", "KiB", Goal("<=", 32, relative=False)),
        (f"query-version p99, {JN} jobs running (QEMU: {cap})", "µs", None),
        (f"query-version p99, {M} monitors connected (+ the jobs)", "µs", None),
    ]
    for n, u, g in rows:
        R.metric(S, n, u, g)
    R.note(
        "Scale and memory: jobs are mirrors of 1 GiB null-co nodes (read-zeroes) to their own "
        f"null-co target at {LONG_JOB_SPEED // 1024} KiB/s each, started 1,000 commands at a "
        "time while the replies and events are read; all stay running in their copy phase "
        "(not ready) through the measurement; monitors idle. RSS per job excludes the nodes."
    )
    with ctx.servers(monitors=M + 1) as servers:
        for spec, run, why in servers:
            if run is None:
                for n, u, _ in rows:
                    R.metric(S, n, u).skip(spec.name, why)
                continue

            conn = SyncQMP(run.sock(0), timeout=300)
            data = command_bytes("query-version")
            if not run.has(MIRROR):
                for n, u, _ in rows[:3]:
                    R.metric(S, n, u).skip(spec.name, f"not available: no {MIRROR} yet")
            else:
                # Jobs first: at a steady rate-limited state they emit no events,
                # so monitors connected afterwards only add connections.
                jn = _job_cap(spec, JN)
                pairs = _long_job_nodes(conn, "sj", jn)
                before = _settle_rss(run)
                started = _start_long_jobs(conn, "sj", pairs, ctx.log)
                R.metric(S, rows[0][0], "s").add(spec.name, started)
                R.metric(S, rows[1][0], "KiB").add(spec.name, (_settle_rss(run) - before) / jn)
                conn.events.clear()
                R.metric(S, rows[2][0], "µs").add(
                    spec.name, percentile(_rt(conn, data, ctx.p.rt_samples // 2), 99)
                )
                bad = _all_copying(conn, "sj", jn)
                if bad:
                    ctx.log(f"scale: {spec.name}: {bad}")

            async def go(
                _run: Running = run,
                _spec: TargetSpec = spec,
                _conn: SyncQMP = conn,
                _data: bytes = data,
            ) -> None:
                conns = await _connect_many(_run.monitor_after_first, M, None)
                try:
                    # Probe from a thread so that the loop keeps reading for the monitors.
                    probe = await asyncio.to_thread(_rt, _conn, _data, ctx.p.rt_samples // 2)
                    R.metric(S, rows[3][0], "µs").add(_spec.name, percentile(probe, 99))
                finally:
                    for c in conns:
                        c.close()

            asyncio.run(go())
            conn.close()


ALL: list[tuple[str, Callable[[Ctx], None]]] = [
    ("roundtrip", bench_round_trip),
    ("pipelined", bench_pipelined),
    ("connect", bench_connect),
    ("fanout", bench_fanout),
    ("churn", bench_churn),
    ("copy", bench_copy),
    ("rate", bench_rate),
    ("memory", bench_memory),
    ("scale", bench_scale),
]
