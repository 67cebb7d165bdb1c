"""Stream and commit of a qcow2 backing chain, qmpjobd against qemu-storage-daemon.

``python -m bench.chain [--size 1G] [--targets qmpjobd,qemu] [--rounds N]``

For each round and target: a chain base <- mid <- top of ``--size`` is made
by ``qemu-img`` and ``qemu-io`` (base: the whole image, mid: every other
MiB, top: every fourth MiB, random-looking data), the top is opened with
``blockdev-add`` (the backing chain from the headers), and the time from the
job-starting command to the job's ``null`` event is measured for:

* ``stream``: ``block-stream`` of the whole chain into the top;
* ``commit``: intermediate ``block-commit`` of mid into base;
* ``active commit``: ``block-commit`` of the top into base, until READY.

Every result image passes ``qemu-img check``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .client import SyncQMP
from .jobs import wait_job_gone_sync
from .targets import Running, TargetSpec, parse_targets, start

MiB = 1 << 20


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def make_chain(folder: Path, size: int) -> list[Path]:
    """base <- mid <- top, written by qemu-io (one process per image)."""
    paths = [folder / f"{n}.qcow2" for n in ("base", "mid", "top")]
    _run("qemu-img", "create", "-f", "qcow2", paths[0], str(size))
    for lower, upper in itertools.pairwise(paths):
        _run("qemu-img", "create", "-f", "qcow2", "-b", lower.name, "-F", "qcow2", upper)
    for path, step, pattern in ((paths[0], 1, 1), (paths[1], 2, 2), (paths[2], 4, 3)):
        cmds: list[str] = []
        for mib in range(0, size // MiB, step):
            cmds += ["-c", f"write -P {pattern + mib % 200} {mib * MiB} 1M"]
        _run("qemu-io", *cmds, path)
    return paths


def _names(conn: SyncQMP) -> dict[str, str]:
    nodes = conn.execute("query-named-block-nodes")
    return {Path(n["file"]).name: n["node-name"] for n in nodes if n["drv"] == "qcow2"}


def _timed(conn: SyncQMP, command: str, args: dict[str, object], ready: bool = False) -> float:
    start = time.perf_counter()
    conn.execute(command, args)
    if ready:
        while not any(e.get("event") == "BLOCK_JOB_READY" for e in conn.events):
            message = json.loads(conn.read_line())
            if "event" in message:
                conn.events.append(message)
        conn.events = [e for e in conn.events if e.get("event") != "BLOCK_JOB_READY"]
        conn.execute("job-complete", {"id": "j"})
    wait_job_gone_sync(conn, "j")
    return time.perf_counter() - start


CASES: dict[str, Callable[[SyncQMP, dict[str, str]], float]] = {
    "stream": lambda conn, names: _timed(conn, "block-stream", {"job-id": "j", "device": "top"}),
    "commit": lambda conn, names: _timed(
        conn,
        "block-commit",
        {"job-id": "j", "device": "top", "top-node": names["mid.qcow2"]},
    ),
    "active commit": lambda conn, names: _timed(
        conn, "block-commit", {"job-id": "j", "device": "top"}, ready=True
    ),
}


def one(spec: TargetSpec, case: str, size: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="qmpbench-chain-"))
    run: Running | None = None
    try:
        paths = make_chain(folder, size)
        run = start(spec)
        conn = SyncQMP(run.sock())
        try:
            conn.execute(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": "top",
                    "file": {"driver": "file", "filename": str(paths[2])},
                },
            )
            seconds = CASES[case](conn, _names(conn))
            conn.execute("blockdev-del", {"node-name": "top"})
        finally:
            conn.close()
        for path in paths:
            _run("qemu-img", "check", path)
        return seconds
    finally:
        if run is not None:
            run.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--targets", default="qmpjobd,qemu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = _size(args.size)
    targets = [t for t in parse_targets(args.targets) if t.available() is None]
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for case in CASES:
            for spec in targets:  # interleaved, round by round
                results.setdefault((case, spec.name), []).append(one(spec, case, size))
    print(f"chain of {args.size} (base full, mid every other MiB, top every fourth MiB)")
    print(f"median seconds over {args.rounds} rounds\n")
    print("| job | " + " | ".join(t.name for t in targets) + " |")
    print("|---|" + "---|" * len(targets))
    for case in CASES:
        cells = [f"{statistics.median(results[(case, t.name)]):.2f}" for t in targets]
        print(f"| {case} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
