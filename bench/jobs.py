"""Job helpers shared by the job benchmarks: nodes, backups, waiting for the end."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from .client import AsyncQMP, QMPFailure, SyncQMP, command_bytes

#: Small enough that a backup is all overhead.
SHORT_JOB_BYTES = 64 * 1024


def null_node(name: str, size: int, read_zeroes: bool = False) -> dict[str, Any]:
    node: dict[str, Any] = {"driver": "null-co", "node-name": name, "size": size}
    if read_zeroes:
        node["read-zeroes"] = True
    return node


def backup_args(job: str, src: str, dst: str, speed: int = 0) -> dict[str, Any]:
    args: dict[str, Any] = {"job-id": job, "device": src, "target": dst, "sync": "full"}
    if speed:
        args["speed"] = speed
    return args


def mirror_args(job: str, src: str, dst: str, speed: int = 0) -> dict[str, Any]:
    args: dict[str, Any] = {"job-id": job, "device": src, "target": dst, "sync": "full"}
    if speed:
        args["speed"] = speed
    return args


def pipelined(conn: SyncQMP, messages: list[bytes]) -> None:
    """Send every message from a writer thread while this thread reads as many
    replies (and whatever events come with them), so that the server's output
    never piles up unread; raise on the first error."""
    send_error: list[BaseException] = []

    def writer() -> None:
        try:
            conn.sock.sendall(b"".join(messages))
        except BaseException as exc:  # reported after the reads
            send_error.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    first_error: BaseException | None = None
    try:
        for _ in messages:
            try:
                conn.reply()
            except QMPFailure as exc:
                first_error = first_error or exc
    finally:
        thread.join()
    if send_error:
        raise send_error[0]
    if first_error is not None:
        raise first_error


def add_null_pairs(
    conn: SyncQMP, prefix: str, n: int, size: int, read_zeroes: bool = False
) -> list[tuple[str, str]]:
    pairs = [(f"{prefix}s{i}", f"{prefix}t{i}") for i in range(n)]
    msgs = []
    for s, t in pairs:
        msgs.append(command_bytes("blockdev-add", null_node(s, size, read_zeroes)))
        msgs.append(command_bytes("blockdev-add", null_node(t, size, read_zeroes)))
    for i in range(0, len(msgs), 2000):
        pipelined(conn, msgs[i : i + 2000])
    return pairs


def wait_job_gone_sync(conn: SyncQMP, job: str, timeout: float = 600) -> dict[str, Any] | None:
    """Read until *job* reaches ``null``; return its BLOCK_JOB_COMPLETED/CANCELLED data."""
    done = None
    deadline = time.monotonic() + timeout
    seen = conn.events
    conn.events = []
    while True:
        while seen:
            ev = seen.pop(0)
            data = ev.get("data", {})
            if (
                ev["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
                and data.get("device") == job
            ):
                done = data
            if (
                ev["event"] == "JOB_STATUS_CHANGE"
                and data.get("id") == job
                and data.get("status") == "null"
            ):
                conn.events.extend(seen)
                return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} did not end")
        seen = [json.loads(conn.read_line())]
        if "event" not in seen[0]:
            seen = []


class JobWatcher:
    """Resolves a future per job id when its JOB_STATUS_CHANGE ``null`` arrives."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.events = 0

    def expect(self, job: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[job] = fut
        return fut

    def __call__(self, conn: AsyncQMP, now: float, line: bytes) -> None:
        self.events += 1
        if b'"status": "null"' not in line:
            return
        job = json.loads(line)["data"]["id"]
        fut = self.waiting.pop(job, None)
        if fut is not None and not fut.done():
            fut.set_result(None)


async def run_job(conn: AsyncQMP, watcher: JobWatcher, job: str, src: str, dst: str) -> None:
    gone = watcher.expect(job)
    await conn.execute("blockdev-backup", backup_args(job, src, dst))
    await gone
