"""Raw-socket QMP clients for measuring: no QMP library in the hot path.

Two flavours:

* :class:`SyncQMP`, a blocking socket for sequential round trips and
  pipelining (a writer thread and the reading caller), where asyncio's own
  cost would only add noise;
* :class:`AsyncQMP`, an :class:`asyncio.Protocol` for many monitors at once
  (event fan-out, jobs): it timestamps every line as it arrives and parses
  lazily.

Both read line-framed replies (QEMU and qmpjobd end every message with a
newline) and match replies to requests by order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

NEGOTIATE = b'{"execute": "qmp_capabilities"}\n'


class QMPFailure(RuntimeError):
    """The server answered with an error."""


def command_bytes(command: str, arguments: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"execute": command}
    if arguments is not None:
        msg["arguments"] = arguments
    return json.dumps(msg).encode() + b"\n"


class SyncQMP:
    """A blocking QMP connection."""

    def __init__(self, path: str, *, negotiate: bool = True, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        #: When false, events read on the way to a reply are counted, not kept.
        self.keep_events = True
        self.events_seen = 0
        self.greeting = json.loads(self.read_line())
        if negotiate:
            self.sock.sendall(NEGOTIATE)
            self.reply()

    def close(self) -> None:
        self.sock.close()

    def read_line(self) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return line
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk

    def reply(self) -> Any:
        """The next reply; events read on the way are kept in :attr:`events`."""
        while True:
            msg = json.loads(self.read_line())
            if "event" in msg:
                self.events_seen += 1
                if self.keep_events:
                    self.events.append(msg)
                continue
            if "error" in msg:
                raise QMPFailure(f"{msg['error'].get('class')}: {msg['error'].get('desc')}")
            return msg.get("return")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.sock.sendall(command_bytes(command, arguments))
        return self.reply()

    def raw_round_trip(self, data: bytes) -> None:
        """Send *data* (one command) and read one line back, no parsing: the hot loop."""
        self.sock.sendall(data)
        self.read_line()


class AsyncQMP(asyncio.Protocol):
    """An asyncio QMP connection that timestamps every message on arrival."""

    def __init__(self, on_event: Callable[[AsyncQMP, float, bytes], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self.greeted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.on_event = on_event
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        negotiate: bool = True,
        on_event: Callable[[AsyncQMP, float, bytes], None] | None = None,
    ) -> AsyncQMP:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(lambda: cls(on_event), path)
        await proto.greeted
        if negotiate:
            await proto.execute("qmp_capabilities")
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self._buf + data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start : end + 1]
            start = end + 1
            if b'"timestamp": {"seconds"' in line:
                if self.on_event is not None:
                    self.on_event(self, now, line)
                continue
            if not self.greeted.done():
                self.greeted.set_result(json.loads(line))
                continue
            if self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(line)
        self._buf = buf[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionError("server closed the connection")
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(err)
        self._waiters.clear()
        if not self.greeted.done():
            self.greeted.set_exception(err)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, data: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.transport.write(data)
        return fut

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        line = await self.send(command_bytes(command, arguments))
        msg = json.loads(line)
        if "error" in msg:
            raise QMPFailure(f"{msg['error'].get('class')}: {msg['error'].get('desc')}")
        return msg.get("return")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
