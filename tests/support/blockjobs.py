"""Helpers for the block job tests: a client that records events compactly,
the events it records, nodes to add, and image files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..conftest import RawClient

Event = tuple[Any, ...]


def compact(message: dict[str, Any]) -> Event:
    """``("J", status, id)`` for JOB_STATUS_CHANGE, else ``(event, data)``."""
    if message["event"] == "JOB_STATUS_CHANGE":
        return ("J", message["data"]["status"], message["data"]["id"])
    return (message["event"], message["data"])


class JobClient:
    """A RawClient wrapper that keeps every event it sees, in order."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, sock: Path) -> JobClient:
        return cls(await RawClient.connect(sock))

    async def cmd(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a command; events before the reply are recorded; returns the reply."""
        await self.raw.send({"execute": command, "arguments": arguments})
        while True:
            message = await self.raw.recv()
            if "event" in message:
                self.events.append(compact(message))
                continue
            return message

    async def ok(self, command: str, **arguments: Any) -> Any:
        reply = await self.cmd(command, **arguments)
        assert "return" in reply, reply
        return reply["return"]

    async def error(self, command: str, **arguments: Any) -> tuple[str, str]:
        reply = await self.cmd(command, **arguments)
        assert "error" in reply, reply
        return reply["error"]["class"], reply["error"]["desc"]

    async def wait_for(self, *event: Any, count: int = 1, timeout: float = 10.0) -> None:
        """Record events until ``count`` events equal to ``event`` arrived."""
        while self.events.count(event) < count:
            message = await self.raw.recv(timeout)
            if "event" in message:
                self.events.append(compact(message))

    def take(self) -> list[Event]:
        """The events recorded so far; the record starts afresh."""
        out, self.events = self.events, []
        return out

    async def close(self) -> None:
        await self.raw.close()


def sha256(path: Path, length: int | None = None) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data if length is None else data[:length]).hexdigest()


def write_random(path: Path, size: int, seed: int = 1) -> bytes:
    import random

    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def write_sparse(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 2) -> None:
    """A sparse file of ``size`` bytes with random data only at ``(offset, length)``."""
    import random

    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(rng.randbytes(length))


SIZE = 1000123  # node size 1000448 (rounded up to 512), progress 1048576 (64 KiB clusters)


def J(status: str, job: str) -> tuple[str, str, str]:
    return ("J", status, job)


def blip(job: str) -> list[Any]:
    return [J("created", job), J("running", job), J("paused", job), J("running", job)]


def done(job: str, length: int, kind: str = "backup") -> dict[str, Any]:
    return {"device": job, "len": length, "offset": length, "speed": 0, "type": kind}


async def add_file(c: JobClient, name: str, path: Path, **extra: Any) -> None:
    await c.ok("blockdev-add", driver="file", filename=str(path), **{"node-name": name}, **extra)


async def add_null(c: JobClient, name: str, size: int = 1 << 20) -> None:
    await c.ok("blockdev-add", driver="null-co", size=size, **{"node-name": name})
