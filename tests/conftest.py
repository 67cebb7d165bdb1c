"""Shared fixtures: short socket paths, an in-process daemon, a raw QMP client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from qmpjobd.app import App, Config

from .support import RELEASE


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (pytest's tmp_path can exceed 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qj-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class RawClient:
    """A QMP client on raw bytes: sends exactly what it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: dict[str, Any] | None = None
        #: Events that arrived while execute() waited for its reply.
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: Path, *, negotiate: bool = True) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 26)
        client = cls(reader, writer)
        client.greeting = await client.recv()
        if negotiate:
            assert await client.execute("qmp_capabilities") == {"return": {}}
        return client

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode())

    async def recv_line(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.recv_line(timeout))
        return message

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"execute": command, **extra}
        if arguments is not None:
            message["arguments"] = arguments
        await self.send(message)
        while True:
            reply = await self.recv()
            if "event" not in reply:
                return reply
            self.events.append(reply)

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Events kept by execute(), then everything that arrives until nothing
        has for *seconds*."""
        out, self.events = self.events, []
        while True:
            try:
                out.append(await self.recv(seconds))
            except TimeoutError:
                return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await self.writer.wait_closed()


@pytest.fixture
async def app(sock_dir: Path) -> AsyncIterator[App]:
    """An in-process daemon listening on ``sock_dir/qmp.sock``."""
    daemon = App(Config(sockets=[sock_dir / "qmp.sock"], qemu_version=RELEASE))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


@pytest.fixture
def sock(app: App) -> Path:
    return Path(app.config.sockets[0])


@pytest.fixture
async def c(sock: Path) -> AsyncIterator[Any]:
    """A :class:`tests.support.blockjobs.JobClient` on the ``app`` fixture's socket."""
    from .support.blockjobs import JobClient  # it builds on RawClient, defined here

    client = await JobClient.connect(sock)
    yield client
    await client.close()


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect after the test, so that a socket or transport it leaked is
    reported (a ResourceWarning, an error here) against this very test.

    For the tests of connection lifecycles only: after every test it cost a
    large share of the suite's time. A leak elsewhere still fails the run;
    pytest reports it against a later test or at the end of the session.
    """
    yield
    gc.collect()
