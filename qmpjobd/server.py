"""Listening sockets, the session registry, event fan-out and phased shutdown.

Many monitors share one socket (QEMU allows one per chardev). Each event is
encoded once and written to every negotiated session; a session that cannot
keep up disconnects itself (see :mod:`qmpjobd.session`), so fan-out never
waits.

Must not import: jobs internals, block.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol, wire
from .commands import CommandTable
from .dispatch import Dispatcher
from .errors import ConfigError
from .events import Event, EventBus, Subscription
from .session import Session
from .systemd import PassedSocket

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTBOUND = 8 * 1024 * 1024
#: Many monitors may connect at once (bursts of connects are common at start-up).
_BACKLOG = 4096
#: Connections accepted per wake-up of a listening socket, so that a burst of
#: connects cannot keep the loop from serving the monitors already connected.
_ACCEPT_BATCH = 64
#: accept() errors that concern one connection only: accept the next one.
_ONE_CONNECTION_FAILED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
#: While out of resources, try accepting again after this long (or as soon as a
#: monitor disconnects, which frees a descriptor).
ACCEPT_RETRY_DELAY = 0.3
#: At most one warning about failing accepts per this many seconds.
_ACCEPT_WARNING_INTERVAL = 1.0


@dataclass
class _Listener:
    """One listening socket, and the file it is bound to."""

    path: Path
    sock: socket.socket
    #: The name the service manager gave a passed socket; None for ours.
    name: str | None
    #: (st_dev, st_ino) of the socket file we bound: at exit we remove the
    #: file only if it is still ours, not one a newer daemon bound there since.
    identity: tuple[int, int] | None


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
        passed_sockets: Sequence[PassedSocket] = (),
        sessions_changed: Callable[[], None] | None = None,
        greeting: dict[str, Any] | None = None,
    ) -> None:
        self.greeting = wire.encode(greeting if greeting is not None else protocol.greeting())
        self.negotiation_table = negotiation_table
        self.command_table = command_table
        self.socket_paths = [Path(p) for p in socket_paths]
        self.socket_mode = socket_mode
        self.max_outbound = max_outbound
        self.passed_sockets = list(passed_sockets)
        self._sessions_changed = sessions_changed
        self.sessions: set[Session] = set()
        #: Runs the in-band commands of every session one at a time.
        self.dispatcher = Dispatcher()
        #: Negotiated sessions in the order they negotiated: event recipients.
        self._listeners: dict[Session, None] = {}
        self._sockets: list[_Listener] = []
        self._accepting = False
        self._retry: asyncio.Handle | None = None
        self._last_accept_warning = -_ACCEPT_WARNING_INTERVAL
        self._connecting: set[asyncio.Task[None]] = set()
        self._counter = 0
        self._pending_events: list[bytes] = []
        self._flush_scheduled = False
        self._subscription: Subscription = bus.subscribe(self._fan_out)
        #: Called by a session right before it writes to its socket (events,
        #: replies, a batch of both): a ledger records what changed first.
        #: Must not raise.
        self.before_write: Callable[[], object] | None = None

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every socket path.

        :raise ConfigError: a path is in use by a live daemon, is not a socket,
            or cannot be bound.
        """
        try:
            for passed in self.passed_sockets:
                self._sockets.append(_adopt(passed))
            adopted = {os.path.abspath(listener.path) for listener in self._sockets}
            for path in self.socket_paths:
                if os.path.abspath(path) in adopted:
                    continue  # the service manager passed this one
                await _claim_path(path)
                self._sockets.append(_bind(path, self.socket_mode))
        except BaseException:
            await self.close(0.0)
            raise
        self._resume_accepting()

    def addresses(self) -> list[str]:
        """Where the server listens, for logs."""
        return [
            str(listener.path) if listener.name is None else f"{listener.path} ({listener.name})"
            for listener in self._sockets
        ]

    # -- accepting -----------------------------------------------------------

    def _resume_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._accepting or not self._sockets:
            return
        loop = asyncio.get_running_loop()
        self._accepting = True
        for listener in self._sockets:
            loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _pause_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        loop = asyncio.get_running_loop()
        for listener in self._sockets:
            loop.remove_reader(listener.sock.fileno())

    def _accept(self, listener: _Listener) -> None:
        """Accept what waits on *listener*, a bounded batch at a time.

        Out of descriptors (or memory), accepting again at once would fail the
        same way for every connection in the backlog: stop watching the
        listening sockets instead, and try again after a short delay or as
        soon as a monitor disconnects.
        """
        loop = asyncio.get_running_loop()
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION_FAILED:
                    continue
                # Out of descriptors or memory, or anything unexpected: pause
                # rather than fail again at once, for as long as the error lasts.
                self._accept_failed(listener.path, exc)
                return
            conn.setblocking(False)
            task = loop.create_task(self._connect(conn, listener.path))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _accept_failed(self, path: Path, exc: OSError) -> None:
        self._pause_accepting()
        now = time.monotonic()
        if now - self._last_accept_warning >= _ACCEPT_WARNING_INTERVAL:
            self._last_accept_warning = now
            log.warning("cannot accept connections on %s: %s; retrying", path, exc.strerror)
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(
                ACCEPT_RETRY_DELAY, self._resume_accepting
            )

    async def _connect(self, conn: socket.socket, path: Path) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self._new_session(path), sock=conn
            )
        except Exception as exc:
            log.warning("dropping a new connection: %s", exc)
            conn.close()
        except BaseException:
            conn.close()
            raise

    def _new_session(self, path: Path) -> Session:
        self._counter += 1
        session = Session(self, self._counter)
        self.sessions.add(session)
        log.debug("monitor #%d connected on %s", session.number, path)
        if self._sessions_changed is not None:
            self._sessions_changed()
        return session

    # -- registry ------------------------------------------------------------

    def negotiated(self, session: Session) -> None:
        self._listeners[session] = None

    def forget(self, session: Session) -> None:
        if session in self.sessions:
            log.debug("monitor #%d disconnected", session.number)
        self.sessions.discard(session)
        self._listeners.pop(session, None)
        if self._sessions_changed is not None:
            self._sessions_changed()
        if self._retry is not None:
            # Accepting was paused for want of descriptors: this session's is
            # about to be released (once this callback returns), so try again then.
            self._retry.cancel()
            self._retry = asyncio.get_running_loop().call_soon(self._resume_accepting)

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
        """Close the listening sockets and remove their files (if still ours)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._pause_accepting()
        for listener in self._sockets:
            listener.sock.close()
            _unlink_if_ours(listener)
        self._sockets.clear()

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
        for task in list(self._connecting):
            task.cancel()


async def _claim_path(path: Path) -> None:
    """Make *path* free for a new socket: refuse a live one, replace a stale one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"Failed to bind socket to {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(probe, str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("replacing stale socket %s", path)
            try:
                path.unlink(missing_ok=True)
            except OSError as unlink_error:
                raise ConfigError(
                    f"Failed to remove stale socket {path}: {unlink_error.strerror}"
                ) from None
            return
        raise ConfigError(f"cannot check socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise ConfigError(f"another daemon is listening on {path}")


#: Linux's sun_path holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH = 107


def _bind(path: Path, mode: int) -> _Listener:
    """A non-blocking socket listening on *path* with permissions *mode*.

    :raise ConfigError: one line naming the path and the reason.
    """
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"UNIX socket path '{path}' is too long"
            f" (must be less than {_MAX_SOCKET_PATH + 1} bytes)"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.bind(str(path))
        except OSError as exc:
            raise ConfigError(f"Failed to bind socket to {path}: {exc.strerror}") from None
        st = os.stat(path)
        listener = _Listener(path, sock, None, (st.st_dev, st.st_ino))
        try:
            os.chmod(path, mode)
            sock.listen(_BACKLOG)
        except OSError as exc:
            _unlink_if_ours(listener)
            raise ConfigError(f"Failed to listen on socket {path}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return listener


def _adopt(passed: PassedSocket) -> _Listener:
    """A listening socket passed by the service manager (never unlinked by us)."""
    try:
        sock = socket.socket(fileno=passed.fd)
    except OSError as exc:
        raise ConfigError(
            f"socket activation: descriptor {passed.fd} ({passed.name}): {exc.strerror}"
        ) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(
            f"socket activation: descriptor {passed.fd} ({passed.name}) is not a Unix stream socket"
        )
    sock.setblocking(False)
    address = sock.getsockname()
    path = Path(address) if isinstance(address, str) and address else Path(f"fd:{passed.fd}")
    return _Listener(path, sock, passed.name, None)


def _unlink_if_ours(listener: _Listener) -> None:
    if listener.identity is None:
        return
    try:
        st = listener.path.lstat()
        if (st.st_dev, st.st_ino) == listener.identity:
            listener.path.unlink()
    except FileNotFoundError:
        pass
    listener.identity = None
