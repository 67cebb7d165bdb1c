"""One QMP client: greeting, negotiation state, request processing in order,
and a bounded outbound buffer.

A session is an :class:`asyncio.Protocol`. Input bytes go through the
``wire`` decoder; each decoded value is checked by ``protocol`` and run
through the session's current :class:`~qmpjobd.commands.CommandTable`, one
request at a time: the next request starts only after the current reply has
been written, so replies keep request order. Events (written by the server's
fan-out while the session is negotiated) share the same outbound stream, so
an event published while a command runs precedes that command's reply.

Outbound data is bounded: when a client stops reading and what is buffered
for it exceeds ``max_outbound`` bytes, the client is disconnected and
logged. Nothing ever waits for a slow client.

Must not import: jobs internals, block.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from types import CoroutineType
from typing import Any, Protocol

from . import protocol, wire
from .commands import CommandTable
from .dispatch import Dispatcher
from .errors import QMPError

log = logging.getLogger(__name__)

#: Decoded requests waiting to run before the session stops reading.
_MAX_QUEUED_REQUESTS = 256


class SessionHost(Protocol):
    """What a session needs from the server that accepted it."""

    negotiation_table: CommandTable
    command_table: CommandTable
    max_outbound: int
    dispatcher: Dispatcher
    #: The encoded greeting (the profile's release).
    greeting: bytes
    before_write: Callable[[], object] | None

    def negotiated(self, session: Session) -> None: ...

    def flush_events(self) -> None: ...

    def forget(self, session: Session) -> None: ...


class Runstate(Enum):
    NEGOTIATING = "negotiating"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Session(asyncio.Protocol):
    """One connected monitor."""

    def __init__(self, server: SessionHost, number: int) -> None:
        self.server = server
        self.number = number
        self.table: CommandTable = server.negotiation_table
        self.runstate = Runstate.NEGOTIATING
        self.oob_enabled = False
        self._transport: asyncio.Transport | None = None
        self._decoder = wire.Decoder()
        self._queue: deque[object] = deque()
        self._busy = False
        self._reading_paused = False
        self._eof = False
        self._batch: list[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._after_reply: list[Callable[[], None]] = []
        self.closed = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<Session #{self.number} {self.runstate.value}>"

    # -- SessionControl -------------------------------------------------------

    def enter_command_mode(self, capabilities: list[str]) -> None:
        self.oob_enabled = "oob" in capabilities
        self.table = self.server.command_table
        self.runstate = Runstate.RUNNING
        self.server.negotiated(self)

    def after_reply(self, callback: Callable[[], None]) -> None:
        self._after_reply.append(callback)

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.write(self.server.greeting)

    def data_received(self, data: bytes) -> None:
        if self.runstate is Runstate.CLOSED:
            return
        self._queue.extend(self._decoder.feed(data))
        self._pump()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._queue.extend(self._decoder.feed_eof())
        self._pump()
        # Keep the write side open until the replies still owed are out.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.runstate = Runstate.CLOSED
        self._queue.clear()
        self.server.dispatcher.forget(self)
        self.server.forget(self)
        if self._task is not None and not self._task.done():
            # The command goes on to completion; only its reply has nowhere to go.
            pass
        if not self.closed.done():
            self.closed.set_result(None)

    # -- output ---------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.write(wire.encode(message))

    def write(self, data: bytes) -> None:
        """Write bytes, or drop a client whose unread backlog is over the bound.

        While a batch of requests is being answered, output is gathered and
        written once at the end of the batch (one system call, not one per
        reply); everything still goes out in the order it was produced.
        """
        if self._batch is not None:
            self._batch.append(data)
            return
        self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self.runstate is Runstate.CLOSED or transport.is_closing():
            return
        before_write = self.server.before_write
        if before_write is not None:
            before_write()  # what the data reports is recorded first
        transport.write(data)
        backlog = transport.get_write_buffer_size()
        if backlog > self.server.max_outbound:
            log.warning(
                "monitor #%d: %d bytes unread (limit %d): disconnecting",
                self.number,
                backlog,
                self.server.max_outbound,
            )
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close once everything written so far is flushed."""
        if self.runstate is not Runstate.CLOSED:
            self.runstate = Runstate.CLOSING
        if self._transport is not None:
            self._transport.close()

    # -- requests -------------------------------------------------------------

    def _pump(self) -> None:
        """Run queued requests in order until one must be awaited."""
        if self._queue and self._batch is None:
            self.server.flush_events()  # what happened before these requests comes first
            self._batch = []
            dispatcher = self.server.dispatcher
            try:
                while self._queue and not self._busy and self.runstate is not Runstate.CLOSED:
                    if not dispatcher.free_for(self):
                        # Another monitor's command is waiting for something:
                        # ours run after it, as in QEMU's one dispatcher.
                        dispatcher.wait(self, self._pump)
                        break
                    self._run_one(self._queue.popleft())
            finally:
                batch, self._batch = self._batch, None
                if batch:
                    self._write_now(b"".join(batch))
        if self._eof and not self._busy and not self._queue:
            self.close()
            return
        self._flow_control()

    def _flow_control(self) -> None:
        transport = self._transport
        if transport is None or self.runstate is Runstate.CLOSED:
            return
        if not self._reading_paused and len(self._queue) > _MAX_QUEUED_REQUESTS:
            transport.pause_reading()
            self._reading_paused = True
        elif self._reading_paused and len(self._queue) <= _MAX_QUEUED_REQUESTS // 4:
            transport.resume_reading()
            self._reading_paused = False

    def _run_one(self, item: object) -> None:
        if isinstance(item, wire.ParseError):
            log.debug("monitor #%d: bad input: error GenericError: %s", self.number, item.desc)
            self.send(protocol.error_reply(QMPError(item.desc)))
            return
        try:
            request = protocol.check_request(item, oob_enabled=self.oob_enabled)
        except protocol.RequestError as exc:
            log.debug(
                "monitor #%d: bad request: error %s: %s",
                self.number,
                exc.error.error_class.value,
                exc.error.desc,
            )
            self.send(protocol.error_reply(exc.error, exc.id))
            return
        table = self.table
        try:
            command = table.lookup(request)
            result = command.handler(self, request.arguments)
        except QMPError as exc:
            self._reply_error(table, exc, request)
            return
        except Exception:
            log.exception("command %s failed", request.command)
            self._reply_error(table, QMPError("Internal error"), request)
            return
        if type(result) is CoroutineType:  # an async handler
            self._busy = True
            self.server.dispatcher.acquire(self)
            self._task = asyncio.get_running_loop().create_task(
                self._finish(table, request, result)
            )
        else:
            self._reply(result, request)

    async def _finish(self, table: CommandTable, request: protocol.Request, pending: Any) -> None:
        try:
            result = await pending
        except QMPError as exc:
            self._reply_error(table, exc, request)
        except Exception:
            log.exception("command %s failed", request.command)
            self._reply_error(table, QMPError("Internal error"), request)
        else:
            self._reply(result, request)
        finally:
            self._busy = False
            self._task = None
            self.server.dispatcher.release(self)
        self._pump()

    def _reply(self, result: Any, request: protocol.Request) -> None:
        log.debug("monitor #%d: %s: return", self.number, request.command)
        self.server.flush_events()  # events the command caused go first
        self.send(protocol.reply(result, request.id))
        self._run_after_reply()

    def _reply_error(self, table: CommandTable, error: QMPError, request: protocol.Request) -> None:
        error = table.rewrite(error)
        log.debug(
            "monitor #%d: %s: error %s: %s",
            self.number,
            request.command,
            error.error_class.value,
            error.desc,
        )
        self.server.flush_events()
        self.send(protocol.error_reply(error, request.id))
        self._run_after_reply()

    def _run_after_reply(self) -> None:
        callbacks, self._after_reply = self._after_reply, []
        for callback in callbacks:
            callback()
