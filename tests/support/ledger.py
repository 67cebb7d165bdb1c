"""A daemon child process with a state directory, and a blocking client that
keeps every event it sees (for the ledger and journal tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .sync_client import SyncClient


class Daemon:
    """``python -m qmpjobd --socket SOCK --state-dir DIR ...`` as a child."""

    def __init__(self, sock: Path, state_dir: Path | None, *extra: str, log: Path) -> None:
        self.sock = sock
        self.state_dir = state_dir
        self.extra = extra
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "qmpjobd", "--socket", str(self.sock)]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        return [*cmd, *self.extra]

    def start(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log_text()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.sock))
                return
            time.sleep(0.01)
        raise AssertionError("daemon did not start")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class Client(SyncClient):
    """A blocking QMP client, negotiated, that keeps every event, in order."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__(path, timeout, negotiate=True)

    def ok(self, command: str, **arguments: Any) -> Any:
        reply = self.execute(command, **arguments)
        assert "return" in reply, (command, reply)
        return reply["return"]

    def wait_for(self, name: str, start: int = 0, **data: Any) -> dict[str, Any]:
        """Read until an event ``name`` whose data holds ``data`` (looking
        from the ``start``-th event the client kept)."""
        for event in self.events[start:]:
            if event["event"] == name and data.items() <= event["data"].items():
                return event
        while True:
            event = self.recv()
            assert "event" in event, event
            self.events.append(event)
            if event["event"] == name and data.items() <= event["data"].items():
                return event


def brief(events: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Events without timestamps: (name, status or the data)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if e["event"] == "JOB_STATUS_CHANGE":
            out.append((e["data"]["id"], e["data"]["status"]))
        else:
            out.append((e["event"], e["data"]))
    return out


def cursor(event: dict[str, Any]) -> dict[str, int]:
    stamp: dict[str, int] = event["timestamp"]
    return stamp
