"""A blocking QMP client on a raw Unix socket, for tests that drive a
daemon child process from plain (not async) code."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class SyncClient:
    """Reads the greeting (``greeting``); with ``negotiate``, also runs
    ``qmp_capabilities``. Events read while waiting for a reply are kept,
    in order, in ``events``."""

    def __init__(self, path: Path, timeout: float = 10.0, *, negotiate: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self.greeting = self.recv()
        if negotiate:
            assert self.execute("qmp_capabilities") == {"return": {}}

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def recv(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise ConnectionError("connection closed")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode())
        while True:
            reply = self.recv()
            if "event" in reply:
                self.events.append(reply)
            else:
                return reply
