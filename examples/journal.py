#!/usr/bin/env python3
"""Catch up with the events missed while away, then follow new ones.

Usage: python examples/journal.py SOCKET CURSOR_FILE [FOLLOW_SECONDS]

A client that comes and goes (a management tool restarted, a laptop that
slept) keeps one thing between runs: the ``timestamp`` object of the last
event it handled, in CURSOR_FILE. On connecting it asks qmpjobd for what
came after it with ``x-qmpjobd-query-events`` (an unstable extension), and
prints each event as if it had been connected all along. When the journal no
longer holds everything after the cursor (``"gap": true``), it says so and
falls back to ``query-jobs``, which always tells the current state. Then it
follows live events for FOLLOW_SECONDS (default 0), saving the cursor after
each one it prints. The cursor file is written atomically.

Needs ``qemu.qmp``: ``pip install -e '.[examples]'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient

START = {"seconds": 0, "microseconds": 0}


def load_cursor(path: Path) -> dict[str, int]:
    try:
        cursor: dict[str, int] = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(START)
    return cursor


def save_cursor(path: Path, cursor: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cursor) + "\n")
    os.replace(tmp, path)


def show(event: dict[str, Any]) -> None:
    print(f"{event['event']} {json.dumps(event['data'], sort_keys=True)}")


def newer(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["seconds"], a["microseconds"]) > (b["seconds"], b["microseconds"])


async def main(sock: str, cursor_file: Path, follow: float) -> int:
    qmp = QMPClient("journal-example")
    listener = EventListener()
    qmp.register_listener(listener)
    await qmp.connect(sock)
    try:
        cursor = load_cursor(cursor_file)
        # Listen first, then read the journal: an event published in between
        # is both in the journal and queued here; the cursor skips the copy.
        read: Any = await qmp.execute("x-qmpjobd-query-events", {"since": cursor})
        if read["gap"]:
            print("some events were dropped from the journal; the jobs now:")
            for job in await qmp.execute("query-jobs"):  # type: ignore[union-attr]
                print(
                    f"  {job['id']}: {job['status']}"
                    + (f" ({job['error']})" if "error" in job else "")
                )
        for event in read["events"]:
            show(event)
            cursor = event["timestamp"]
        save_cursor(cursor_file, cursor)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + follow
        while (left := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(listener.get(), left)
            except TimeoutError:
                break
            event = dict(message)
            if not newer(event["timestamp"], cursor):
                continue  # already read from the journal
            show(event)
            cursor = event["timestamp"]
            save_cursor(cursor_file, cursor)
    finally:
        await qmp.disconnect()
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    follow = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]), follow)))
