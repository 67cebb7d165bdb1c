"""The daemon of the ``qmpjobd`` fixture, and the monitor helper (on qemu.qmp).

:func:`start_daemon` runs a qmpjobd daemon in a thread of its own, with its
own event loop, listening on a private socket: clients under test talk to it
over that socket exactly as they would talk to QEMU. :class:`Monitor` is a
small async helper for the test itself: run commands, wait for a job's
status, check an event sequence, wait for a job to reach a hold. Every
monitor keeps a *transcript*: the commands it sent, the replies, and the
events it consumed, in that order, without timestamps, so two runs of a
script can be compared line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient

from ..app import App, Config
from ..profile import PROFILES
from ..protocol import event_timestamp

Event = tuple[str, dict[str, Any]]


def _line(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _event(message: Any) -> Event:
    data = message.get("data", {})
    return str(message["event"]), dict(data) if isinstance(data, dict) else {}


class Monitor:
    """One QMP connection of the test (see the module doc)."""

    def __init__(
        self, client: QMPClient, listener: EventListener, *, timestamps: bool = False
    ) -> None:
        self.client = client
        self._listener = listener
        #: whether the transcript shows the events' timestamps (virtual clock)
        self.timestamps = timestamps
        self.transcript: list[str] = []

    # -- commands -------------------------------------------------------------

    async def cmd(self, command: str, **arguments: Any) -> Any:
        """Run a command; its return value.

        :raise ExecuteError: the command failed (qemu.qmp's error).
        """
        self.transcript.append(f"-> {command} {_line(arguments)}")
        try:
            result = await self.client.execute(command, arguments or None)
        except ExecuteError as exc:
            self.transcript.append(f"<- error {exc.error_class}: {exc}")
            raise
        self.transcript.append(f"<- {_line(result)}")
        return result

    async def error(self, command: str, **arguments: Any) -> tuple[str, str]:
        """Run a command that must fail: its error class and text."""
        try:
            result = await self.cmd(command, **arguments)
        except ExecuteError as exc:
            return exc.error_class, str(exc)
        raise AssertionError(f"{command} returned {result!r}, not an error")

    # -- events ---------------------------------------------------------------

    async def next_event(self, timeout: float = 10.0) -> Event:
        """The next event (consumed), as ``(name, data)``."""
        message = await asyncio.wait_for(self._listener.get(), timeout)
        name, data = _event(message)
        self._record(message, name, data)
        return name, data

    async def wait_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Consume events until one named ``name`` whose data has ``match``; its data."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got, data = await self.next_event(max(0.0, deadline - loop.time()))
            if got == name and all(data.get(k) == v for k, v in match.items()):
                return data

    async def wait_status(self, job: str, status: str, timeout: float = 10.0) -> None:
        """Consume events until ``job``'s JOB_STATUS_CHANGE to ``status``."""
        await self.wait_event("JOB_STATUS_CHANGE", timeout, id=job, status=status)

    async def expect_events(self, expected: Sequence[Event], timeout: float = 10.0) -> None:
        """Consume ``len(expected)`` events and check they are exactly ``expected``."""
        got = [await self.next_event(timeout) for _ in expected]
        assert got == [(name, dict(data)) for name, data in expected], got

    def drop_events(self) -> list[Event]:
        """Consume the events already received (not waiting for more)."""
        out = []
        for message in self._listener.clear():
            out.append(_event(message))
            self._record(message, *out[-1])
        return out

    def _record(self, message: Any, name: str, data: dict[str, Any]) -> None:
        line = f"<- event {name} {_line(data)}"
        stamp = event_timestamp(message) if self.timestamps else None
        if stamp is not None:
            line += f" @{stamp[0]}.{stamp[1]:06d}"
        self.transcript.append(line)

    # -- extensions -----------------------------------------------------------

    async def wait_held(self, job: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``job`` waits at a hold (x-qmpjobd-query-holds); that hold.

        The polling is left out of the transcript.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            holds = await self.client.execute("x-qmpjobd-query-holds")
            assert isinstance(holds, list)
            for hold in holds:
                if hold["job"] == job and hold["held"]:
                    self.transcript.append(f"== held {_line(hold)}")
                    return dict(hold)
            if loop.time() > deadline:
                raise TimeoutError(f"job {job!r} never reached a hold")
            await asyncio.sleep(0.002)

    # -- life -----------------------------------------------------------------

    async def close(self) -> None:
        self.client.remove_listener(self._listener)
        await self.client.disconnect()

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Connect:
    """``await daemon.monitor()`` or ``async with daemon.monitor() as m``."""

    def __init__(self, socket: Path, name: str, timestamps: bool) -> None:
        self._socket = socket
        self._name = name
        self._timestamps = timestamps
        self._monitor: Monitor | None = None

    async def _open(self) -> Monitor:
        client = QMPClient(self._name)
        listener = EventListener()
        client.register_listener(listener)
        await client.connect(str(self._socket))
        return Monitor(client, listener, timestamps=self._timestamps)

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> Monitor:
        self._monitor = await self._open()
        return self._monitor

    async def __aexit__(self, *exc_info: object) -> None:
        if self._monitor is not None:
            await self._monitor.close()


class Daemon:
    """A daemon running in a thread; ``socket`` is where clients connect."""

    def __init__(self, socket: Path, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.socket = socket
        self.app = app
        self._loop = loop
        self._count = 0

    def monitor(self, name: str | None = None) -> _Connect:
        """Connect a :class:`Monitor` (await it, or use it with ``async with``)."""
        self._count += 1
        virtual = self.app.control.clock.virtual is not None
        return _Connect(self.socket, name or f"test-{self._count}", virtual)


def _config(socket: Path, options: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    clock = options.pop("clock", "system")
    if clock not in ("system", "virtual"):
        raise ValueError(f"unknown clock {clock!r}")
    extra: dict[str, Any] = {}
    if "epoch" in options:
        extra["clock_epoch"] = float(options.pop("epoch"))
    if "profile" in options:
        name = str(options.pop("profile"))
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r} (known: {', '.join(sorted(PROFILES))})")
        extra["qemu_version"] = name
    if options:
        raise TypeError(f"unknown qmpjobd options: {sorted(options)}")
    return Config(sockets=[socket], clock=clock, **extra), {}


@contextlib.contextmanager
def start_daemon(**options: Any) -> Iterator[Daemon]:
    """Run a daemon on a private socket until the block ends.

    :param clock: ``"system"`` (the default) or ``"virtual"``.
    :param epoch: where a virtual clock starts (seconds since 1970).
    :param profile: the QEMU release to emulate (``--qemu-version``).
    """
    folder = Path(tempfile.mkdtemp(prefix="qj-"))
    socket = folder / "qmp.sock"
    config, app_options = _config(socket, dict(options))
    loop = asyncio.new_event_loop()
    apps: list[App] = []
    started = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        try:
            app = App(config, **app_options)
            apps.append(app)
            await app.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        await app.serve_until_stopped()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(30)
    try:
        if failure:
            raise failure[0]
        yield Daemon(socket, apps[0], loop)
    finally:
        if not failure:
            loop.call_soon_threadsafe(apps[0].request_stop, "test over")
        thread.join(30)
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)
