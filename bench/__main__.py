"""``python -m bench [--quick | --smoke] [--targets qmpjobd,qemu] [--out FILE] [--only NAMES]``."""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from .model import Results
from .report import markdown, table
from .suite import ALL, Ctx, Params
from .targets import parse_targets


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="fewer iterations, smaller files (< 1 min)"
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="each benchmark once with minimal sizes, qmpjobd only unless --targets",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="comma-separated: qmpjobd, qemu, NAME=sock:PATH, NAME=cmd:COMMAND "
        "(default qmpjobd,qemu; the first is the ratios' base)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per benchmark instead of the mode's (the copy benchmark runs "
        "two fewer, at least one)",
    )
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    parser.add_argument(
        "--only", default=None, help="comma-separated benchmarks: " + ",".join(n for n, _ in ALL)
    )
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    targets = parse_targets(args.targets or ("qmpjobd" if args.smoke else "qmpjobd,qemu"))
    chosen = set(args.only.split(",")) if args.only else None
    if chosen and chosen - {n for n, _ in ALL}:
        parser.error(f"unknown benchmarks: {sorted(chosen - {n for n, _ in ALL})}")
    results = Results()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    params = Params.for_mode(mode_name)
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        params.rounds = args.rounds
    ctx = Ctx(targets, params, results, log)
    t0 = time.monotonic()
    failed = False
    for name, fn in ALL:
        if chosen and name not in chosen:
            continue
        t = time.monotonic()
        try:
            fn(ctx)
        except Exception:
            failed = True
            log(f"benchmark {name} failed:\n{traceback.format_exc()}")
            results.note(f"benchmark {name} failed: see the run's log")
        log(f"{name}: {time.monotonic() - t:.1f} s")
    elapsed = time.monotonic() - t0
    print(table(results, targets))
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(results, targets, argv, elapsed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
