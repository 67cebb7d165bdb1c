"""Profile qmpjobd in-process under the round-trip, pipelined, fan-out and churn loads.

``python -m bench.profile [--out DIR] [--only NAMES]`` starts a child process
that runs :class:`qmpjobd.app.App` under :mod:`cProfile`, drives it from this
process with the benchmark clients, and prints the hottest functions of each
load.

The fan-out load publishes synthetic ``JOB_STATUS_CHANGE`` events on the
daemon's own event bus (the child does so on SIGUSR1): the path from
``EventBus.publish`` to the monitors' sockets is the daemon's real one. The
churn load runs the job-churn benchmark (1,000 null-co backups one at a time,
then 1,000 with 50 in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import SyncQMP, command_bytes
from .stats import percentile
from .suite import _Arrivals, _churn, _connect_many, _rt, pipelined_rate

EVENTS_PER_BURST = 200


def child(sock: str, prof_out: str) -> None:
    """The daemon, profiled; SIGUSR1 publishes a burst of events, SIGTERM stops."""
    from qmpjobd.app import App, Config

    profiler = cProfile.Profile()

    async def serve() -> None:
        app = App(Config(sockets=[Path(sock)]))
        loop = asyncio.get_running_loop()

        def burst() -> None:
            for i in range(EVENTS_PER_BURST):
                loop.call_later(
                    0.002 * i,
                    app.bus.publish,
                    "JOB_STATUS_CHANGE",
                    {"status": "running", "id": f"job{i}"},
                )

        loop.add_signal_handler(signal.SIGUSR1, burst)
        profiler.enable()
        await app.run()
        profiler.disable()

    asyncio.run(serve())
    profiler.dump_stats(prof_out)


def _top(path: str, n: int = 25) -> str:
    import io

    buf = io.StringIO()
    stats = pstats.Stats(path, stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(n)
    return buf.getvalue()


def _run_load(name: str, outdir: str, load: object) -> tuple[str, object]:
    sock = os.path.join(outdir, f"{name}.sock")
    prof = os.path.join(outdir, f"{name}.prof")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bench.profile", "--child", sock, prof], env=env)
    try:
        while not os.path.exists(sock):
            time.sleep(0.01)
        result = load(sock, proc.pid)  # type: ignore[operator]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return prof, result


def load_round_trip(sock: str, pid: int) -> str:
    conn = SyncQMP(sock)
    out = []
    for cmd in ("query-jobs", "query-version"):
        s = _rt(conn, command_bytes(cmd), 5000)
        out.append(f"{cmd} p50 {percentile(s, 50):.1f} µs p99 {percentile(s, 99):.1f} µs")
    conn.close()
    return "; ".join(out)


def load_pipelined(sock: str, pid: int) -> str:
    return f"{pipelined_rate(sock, 20000):.0f} replies/s"


def load_fanout(sock: str, pid: int, k: int = 100) -> str:
    async def go() -> str:
        arrivals = _Arrivals()
        conns = await _connect_many(lambda i: sock, k, arrivals)
        os.kill(pid, signal.SIGUSR1)
        want = EVENTS_PER_BURST * k
        await arrivals.wait_for(want, 30)
        delays = []
        for line, last in arrivals.last.items():
            ts = json.loads(line)["timestamp"]
            delays.append((last - (ts["seconds"] + ts["microseconds"] / 1e6)) * 1e6)
        for c in conns:
            c.close()
        return (
            f"{k} monitors, {EVENTS_PER_BURST} synthetic events 2 ms apart: delay to the "
            f"last monitor p50 {percentile(delays, 50):.0f} µs p99 {percentile(delays, 99):.0f} µs"
        )

    return asyncio.run(go())


class _Sock:
    """Enough of :class:`~bench.targets.Running` for the job benchmarks."""

    def __init__(self, path: str) -> None:
        self.path = path

    def sock(self, i: int = 0) -> str:
        return self.path


def load_churn(sock: str, pid: int, n: int = 1000) -> str:
    run = _Sock(sock)
    seq = asyncio.run(_churn(run, n, 1, "q"))  # type: ignore[arg-type]
    par = asyncio.run(_churn(run, n, 50, "p"))  # type: ignore[arg-type]
    return f"{n} null-co backups: sequential {seq:.0f} jobs/s, 50 in flight {par:.0f} jobs/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--child", nargs=2, metavar=("SOCK", "PROF"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="keep the .prof files here")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", default=None, help="comma-separated loads")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    outdir = args.out or tempfile.mkdtemp(prefix="qmpbench-prof-")
    os.makedirs(outdir, exist_ok=True)
    for name, load in (
        ("roundtrip", load_round_trip),
        ("pipelined", load_pipelined),
        ("fanout", load_fanout),
        ("churn", load_churn),
    ):
        if args.only and name not in args.only.split(","):
            continue
        prof, result = _run_load(name, outdir, load)
        print(f"== {name}: {result}\n{_top(prof, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
