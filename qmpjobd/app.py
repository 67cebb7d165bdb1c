"""The composition root: builds every part of the daemon and wires them together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .block import BlockGraph
from .blockjobs import BlockJobEvents
from .clock import Clock, SystemClock
from .commands import CommandTable, Handler
from .commands.block import block_commands
from .commands.blockjobs import blockjob_commands
from .commands.core import CoreContext, core_commands, negotiation_commands
from .commands.jobs import job_commands
from .events import EventBus
from .jobs import JobManager
from .schema import SchemaSet
from .server import DEFAULT_MAX_OUTBOUND, Server

log = logging.getLogger(__name__)


@dataclass
class Config:
    sockets: Sequence[Path]
    socket_mode: int = 0o600
    pidfile: Path | None = None
    max_outbound: int = DEFAULT_MAX_OUTBOUND
    allow_paths: Sequence[Path] = field(default_factory=list)
    shutdown_deadline: float = 1.0
    job_cancel_deadline: float = 5.0


class App:
    """One daemon instance."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.schemas = SchemaSet()
        self.bus = EventBus(self.clock)
        self.jobs = JobManager(self.bus, self.clock)
        self.jobs.add_listener(BlockJobEvents(self.bus))
        self.graph = BlockGraph(allow_paths=list(config.allow_paths) or None)
        self._stop = asyncio.Event()
        #: Set once every socket listens.
        self.started = asyncio.Event()
        self.core = CoreContext(
            schemas=self.schemas,
            prepare_quit=self.prepare_quit,
            request_stop=self.request_stop,
        )
        commands: list[tuple[str, Handler]] = [
            *blockjob_commands(self.jobs, self.graph),
            *block_commands(self.graph),
            *job_commands(self.jobs),
            *core_commands(self.core),
        ]
        self.negotiation_table = CommandTable(
            self.schemas, negotiation_commands(self.core), negotiation=True
        )
        self.command_table = CommandTable(self.schemas, commands, negotiation=False)
        # query-commands lists the most recently registered command first.
        self.core.command_names = list(reversed(self.command_table.names()))
        self.core.event_names = sorted(self.schemas.events)
        self.server = Server(
            bus=self.bus,
            negotiation_table=self.negotiation_table,
            command_table=self.command_table,
            socket_paths=config.sockets,
            socket_mode=config.socket_mode,
            max_outbound=config.max_outbound,
        )

    async def prepare_quit(self) -> None:
        """What ``quit`` does before its reply: every job cancelled, newest first.

        Jobs get a bounded time to wind down; a job stuck in I/O must not keep
        the daemon from exiting (shutdown stops whatever is left).
        """
        try:
            await asyncio.wait_for(self.jobs.cancel_all(), self.config.job_cancel_deadline)
        except TimeoutError:
            log.warning("jobs did not finish cancelling in time; stopping them")

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        await self.server.start()
        if self.config.pidfile is not None:
            self.config.pidfile.write_text(f"{os.getpid()}\n")
        self.started.set()

    async def shutdown(self) -> None:
        self.server.stop_accepting()
        # No command may start (or go on) while the jobs wind down.
        if not await self.server.dispatcher.close(self.config.job_cancel_deadline):
            log.warning("a command was still running at shutdown")
        await self.prepare_quit()
        await self.server.close(self.config.shutdown_deadline)
        await self.jobs.aclose()
        self.graph.close()
        if self.config.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.pidfile.unlink()

    async def run(self) -> None:
        """Serve until SIGTERM, SIGINT or ``quit``."""
        loop = asyncio.get_running_loop()
        await self.start()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
            installed.append(signum)
        try:
            await self._stop.wait()
            log.info("shutting down")
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.shutdown()
