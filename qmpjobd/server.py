"""Listening sockets, the session registry, event fan-out and phased shutdown.

Many monitors share one socket (QEMU allows one per chardev). Each event is
encoded once and written to every negotiated session; a session that cannot
keep up disconnects itself (see :mod:`qmpjobd.session`), so fan-out never
waits.

Must not import: jobs internals, block.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

from . import protocol
from .commands import CommandTable
from .dispatch import Dispatcher
from .errors import ConfigError
from .events import Event, EventBus, Subscription
from .session import Session

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTBOUND = 8 * 1024 * 1024
#: Many monitors may connect at once (bursts of connects are common at start-up).
_BACKLOG = 4096


class Server:
    """The daemon's Unix-socket front end."""

    def __init__(
        self,
        *,
        bus: EventBus,
        negotiation_table: CommandTable,
        command_table: CommandTable,
        socket_paths: Iterable[Path],
        socket_mode: int = 0o600,
        max_outbound: int = DEFAULT_MAX_OUTBOUND,
    ) -> None:
        self.negotiation_table = negotiation_table
        self.command_table = command_table
        self.socket_paths = [Path(p) for p in socket_paths]
        self.socket_mode = socket_mode
        self.max_outbound = max_outbound
        self.sessions: set[Session] = set()
        #: Runs the in-band commands of every session one at a time.
        self.dispatcher = Dispatcher()
        #: Negotiated sessions in the order they negotiated: event recipients.
        self._listeners: dict[Session, None] = {}
        self._servers: list[asyncio.Server] = []
        self._bound: list[Path] = []
        self._counter = 0
        self._pending_events: list[bytes] = []
        self._flush_scheduled = False
        self._subscription: Subscription = bus.subscribe(self._fan_out)

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every socket path.

        :raise ConfigError: a path is in use by a live daemon or is not a socket.
        """
        loop = asyncio.get_running_loop()
        try:
            for path in self.socket_paths:
                await _claim_path(path)
                server = await loop.create_unix_server(
                    self._new_session, str(path), backlog=_BACKLOG
                )
                self._servers.append(server)
                self._bound.append(path)
                os.chmod(path, self.socket_mode)
                log.info("listening on %s", path)
        except BaseException:
            await self.close(0.0)
            raise

    def _new_session(self) -> Session:
        self._counter += 1
        session = Session(self, self._counter)
        self.sessions.add(session)
        return session

    # -- registry ------------------------------------------------------------

    def negotiated(self, session: Session) -> None:
        self._listeners[session] = None

    def forget(self, session: Session) -> None:
        self.sessions.discard(session)
        self._listeners.pop(session, None)

    def _fan_out(self, event: Event) -> None:
        """Queue an event for every negotiated session.

        Events published in one pass of the event loop are written together
        (one write per session, not one per event and session); a session
        flushes them before any reply, so an event published while a command
        runs still precedes that command's reply.
        """
        if not self._listeners:
            return
        self._pending_events.append(protocol.event_line(event))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_events)

    def flush_events(self) -> None:
        """Write every queued event to every negotiated session, now."""
        self._flush_scheduled = False
        if not self._pending_events:
            return
        data = b"".join(self._pending_events)
        self._pending_events.clear()
        for session in tuple(self._listeners):
            session.write(data)

    # -- shutdown ------------------------------------------------------------

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def close(self, deadline: float = 1.0) -> None:
        """Phased shutdown: stop accepting, let replies flush, close every
        session, abort the ones still open at the deadline, remove the sockets."""
        self.stop_accepting()
        self.flush_events()
        self._subscription.cancel()
        sessions = list(self.sessions)
        for session in sessions:
            session.close()
        if sessions:
            waiters = [session.closed for session in sessions]
            _, pending = await asyncio.wait(waiters, timeout=deadline)
            for session in sessions:
                if not session.closed.done():
                    session.abort()
            if pending:
                await asyncio.wait(pending, timeout=0.1)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 0.1)
        self._servers.clear()
        for path in self._bound:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._bound.clear()


async def _claim_path(path: Path) -> None:
    """Make *path* free for a new socket: refuse a live one, replace a stale one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(probe, str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("replacing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        raise ConfigError(f"cannot check socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise ConfigError(f"another daemon is listening on {path}")
