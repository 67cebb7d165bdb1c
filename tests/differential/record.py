"""Record golden transcripts from a live qemu-storage-daemon.

Usage (from the repository root)::

    python -m tests.differential.record                 # every scenario
    python -m tests.differential.record NAME...         # some scenarios
    python -m tests.differential.record --group jobs    # one group
    python -m tests.differential.record --repeat 3      # check determinism too
    python -m tests.differential.record --profile 10.0  # another release
    python -m tests.differential.record --list

Each scenario runs against a fresh daemon of the chosen release (default:
the base release, 7.2). The base release's transcripts are written to
``tests/golden/<name>.json``, shared by every release. Another release's
transcript is written to ``tests/golden/<release>/<name>.json`` only if it
differs from the shared one (or the scenario applies to that release alone);
one that matches removes a stale file there. A scenario whose expectations
time out, or whose repeated runs differ after normalisation, is not written
and makes the command exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import (
    BASE_PROFILE,
    GOLDEN_DIR,
    LIVE_PROFILES,
    dump_golden,
    golden_path,
    load_shared_golden,
    profile_golden_path,
    qemu_binary,
    run_on_qemu,
)
from .normalise import check_same_events, compare
from .scenarios import ALL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.differential.record")
    parser.add_argument("names", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--group", help="only scenarios of this group")
    parser.add_argument(
        "--profile", default=BASE_PROFILE, choices=LIVE_PROFILES, help="the QEMU release"
    )
    parser.add_argument("--binary", help="its qemu-storage-daemon (default: found by release)")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario, compared")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = parser.parse_args(argv)

    chosen = [
        s
        for s in ALL
        if (not args.names or s.name in args.names)
        and (not args.group or s.group == args.group)
        and s.applies_to(args.profile)
    ]
    unknown = set(args.names) - {s.name for s in ALL}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.list:
        for s in chosen:
            print(f"{s.group:9} {s.name}: {s.description}")
        return 0
    binary = args.binary or qemu_binary(args.profile)
    if binary is None:
        parser.error(f"qemu-storage-daemon {args.profile} not found; pass --binary")

    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for scenario in chosen:
        first = run_on_qemu(scenario, binary)
        problems = [
            f"step {i}: timed out on connection(s) {s['timed_out']}"
            for i, s in enumerate(first["steps"])
            if s.get("timed_out")
        ]
        problems += check_same_events(first)
        for _ in range(args.repeat - 1):
            problems += [
                f"not deterministic: {p}" for p in compare(first, run_on_qemu(scenario, binary))
            ]
        if problems:
            failed += 1
            print(f"FAIL {scenario.name}", *problems, sep="\n  ", file=sys.stderr)
            continue
        own = profile_golden_path(scenario.name, args.profile, args.out)
        shared = golden_path(scenario.name, args.out)
        if (
            own != shared
            and not scenario.profiles
            and shared.is_file()
            and not compare(load_shared_golden(scenario.name, args.out, args.profile), first)
        ):
            own.unlink(missing_ok=True)
            print(f"ok   {scenario.name} (same as the shared transcript)")
            continue
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(dump_golden(first), encoding="ascii")
        print(f"ok   {scenario.name}" + (f" ({args.profile})" if own != shared else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
