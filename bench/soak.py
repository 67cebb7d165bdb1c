"""Soak: many monitors cycling backups at once.

Each client repeats, on its own two node names:

    blockdev-add null-co x2 (1 MiB) -> blockdev-backup sync=full
    -> wait until the job has left query-jobs -> blockdev-del x2

and the run reports cycles per second, every error, and what is left over
(jobs, nodes) at the end. QEMU takes one client per monitor, so it runs the
same loop with one client; qmpjobd runs it with one client too, for the
side-by-side figure, and with many.

    python -m bench.soak --clients 50 --cycles 100 [--repeat 10] [--targets qmpjobd,qemu]
    python -m bench.soak --socket PATH --clients 10 --cycles 10   # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

from .client import AsyncQMP, QMPFailure
from .targets import TargetSpec, start

MiB = 1 << 20
#: How long one cycle's job may take before the cycle counts as an error.
JOB_TIMEOUT = 60.0


@dataclass
class SoakResult:
    clients: int
    cycles: int
    done: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    leftover_jobs: list[str] = field(default_factory=list)
    leftover_nodes: list[str] = field(default_factory=list)
    #: seconds from sending each blockdev-backup to its reply
    backup_latency: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the backup command's latency, in ms."""
        data = sorted(self.backup_latency)
        if not data:
            return 0.0
        return 1000 * data[min(len(data) - 1, int(q * len(data)))]

    @property
    def clean(self) -> bool:
        return not self.errors and not self.leftover_jobs and not self.leftover_nodes


async def _client(path: str, index: int, cycles: int, result: SoakResult, prefix: str) -> None:
    loop = asyncio.get_running_loop()
    waiting: dict[bytes, asyncio.Future[None]] = {}

    def on_event(_conn: AsyncQMP, _now: float, line: bytes) -> None:
        if b'"null"' not in line or not waiting:
            return
        for key, fut in list(waiting.items()):
            if key in line and not fut.done():
                fut.set_result(None)

    conn = await AsyncQMP.open(path, on_event=on_event)
    source, target = f"{prefix}{index}s", f"{prefix}{index}t"
    try:
        for cycle in range(cycles):
            job = f"{prefix}{index}j{cycle}"
            key = f'"id": "{job}"'.encode()
            try:
                for name in (source, target):
                    await conn.execute(
                        "blockdev-add", {"driver": "null-co", "node-name": name, "size": MiB}
                    )
                gone = waiting[key] = loop.create_future()
                sent = time.monotonic()
                await conn.execute(
                    "blockdev-backup",
                    {"device": source, "target": target, "sync": "full", "job-id": job},
                )
                result.backup_latency.append(time.monotonic() - sent)
                await asyncio.wait_for(gone, JOB_TIMEOUT)
                for _ in range(1000):
                    jobs = await conn.execute("query-jobs")
                    if all(info["id"] != job for info in jobs):
                        break
                    await asyncio.sleep(0.001)
                else:
                    raise QMPFailure(f"job {job} still in query-jobs after its null event")
                for name in (source, target):
                    await conn.execute("blockdev-del", {"node-name": name})
                result.done += 1
            except (QMPFailure, TimeoutError) as exc:
                result.errors.append(f"client {index} cycle {cycle}: {exc!r}")
                for name in (source, target):
                    with contextlib.suppress(QMPFailure):
                        await conn.execute("blockdev-del", {"node-name": name})
            finally:
                waiting.pop(key, None)
    finally:
        conn.close()


async def soak(path: str, clients: int, cycles: int, *, prefix: str = "k") -> SoakResult:
    """Run ``clients`` monitors of ``cycles`` cycles each against the server at ``path``."""
    result = SoakResult(clients, cycles)
    t0 = time.monotonic()
    outcomes = await asyncio.gather(
        *(_client(path, i, cycles, result, prefix) for i in range(clients)),
        return_exceptions=True,
    )
    result.seconds = time.monotonic() - t0
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            result.errors.append(f"client {i} failed: {outcome!r}")
    conn = await AsyncQMP.open(path)
    try:
        result.leftover_jobs = [info["id"] for info in await conn.execute("query-jobs")]
        nodes = await conn.execute("query-named-block-nodes")
        result.leftover_nodes = [info["node-name"] for info in nodes]
    finally:
        conn.close()
    return result


def _line(name: str, results: list[SoakResult]) -> str:
    rates = [r.rate for r in results]
    errors = sum(len(r.errors) for r in results)
    left_jobs = sum(len(r.leftover_jobs) for r in results)
    left_nodes = sum(len(r.leftover_nodes) for r in results)
    first = results[0]
    spread = f"{statistics.median(rates):.1f} [{min(rates):.1f}-{max(rates):.1f}]"
    p50 = statistics.median(r.latency_ms(0.5) for r in results)
    p99 = statistics.median(r.latency_ms(0.99) for r in results)
    return (
        f"| {name} | {first.clients} | {first.cycles} | {len(results)} | {spread} | "
        f"{p50:.1f} / {p99:.1f} | {errors} | {left_jobs} / {left_nodes} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row (same server)")
    parser.add_argument(
        "--targets", default="qmpjobd,qemu", help="qmpjobd and/or qemu (default both)"
    )
    parser.add_argument("--socket", default=None, help="soak a server already listening here")
    parser.add_argument("--json", default=None, help="also write every run's figures here")
    args = parser.parse_args(argv)

    rows: list[tuple[str, list[SoakResult]]] = []

    def run_rows(name: str, path: str, client_counts: list[int]) -> None:
        for clients in client_counts:
            results = []
            for i in range(args.repeat):
                r = asyncio.run(soak(path, clients, args.cycles, prefix=f"r{i}c"))
                print(
                    f"{name} {clients} clients x {args.cycles} cycles: {r.rate:.1f} cycles/s, "
                    f"backup p99 {r.latency_ms(0.99):.1f} ms, "
                    f"{len(r.errors)} errors, left {len(r.leftover_jobs)} jobs "
                    f"{len(r.leftover_nodes)} nodes",
                    file=sys.stderr,
                    flush=True,
                )
                for error in r.errors[:5]:
                    print(f"  {error}", file=sys.stderr)
                results.append(r)
            rows.append((name, results))

    if args.socket is not None:
        run_rows("server", args.socket, [args.clients])
    else:
        for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
            spec = TargetSpec(target, target)
            why = spec.available()
            if why is not None:
                print(f"{target}: skipped ({why})", file=sys.stderr)
                continue
            running = start(spec, monitors=1)
            try:
                if spec.one_socket_per_monitor:
                    counts = [1]  # QEMU: one client per monitor
                else:
                    counts = sorted({args.clients, 1}, reverse=True)
                run_rows(target, running.sock(0), counts)
            finally:
                running.stop()
    print(
        "| target | clients | cycles each | runs | cycles/s median [min-max] "
        "| backup reply p50 / p99 ms | errors | leftover jobs / nodes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, results in rows:
        print(_line(name, results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {
                        "target": name,
                        "clients": r.clients,
                        "cycles": r.cycles,
                        "cycles_per_s": r.rate,
                        "seconds": r.seconds,
                        "backup_p50_ms": r.latency_ms(0.5),
                        "backup_p99_ms": r.latency_ms(0.99),
                        "errors": r.errors,
                        "leftover_jobs": r.leftover_jobs,
                        "leftover_nodes": r.leftover_nodes,
                    }
                    for name, results in rows
                    for r in results
                ],
                f,
                indent=1,
            )
    return 0 if all(r.clean for _, results in rows for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
