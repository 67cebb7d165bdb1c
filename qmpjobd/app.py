"""The composition root: builds every part of the daemon and wires them together."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, protocol
from .block import BlockGraph
from .blockjobs import BlockJobDriver, BlockJobEvents, BlockJobService
from .clock import DEFAULT_EPOCH, Clock, SystemClock, VirtualClock
from .commands import CommandTable, Handler
from .commands.block import block_commands
from .commands.blockjobs import blockjob_commands
from .commands.control import attributed, control_commands, settled
from .commands.core import CoreContext, core_commands, negotiation_commands
from .commands.jobs import job_commands
from .commands.journal import guarded, journal_commands
from .compat import ACCEPT_ALL, CompatPolicy
from .control import Control
from .errors import ConfigError, QMPError
from .events import Event, EventBus
from .jobs import Job, JobManager
from .jobs import restore as restore_job
from .ledger import DEFAULT_MAX_AGE, DEFAULT_MAX_EVENTS, Journal, Ledger, Recorder, Snapshot
from .pidfile import PidFile
from .profile import DEFAULT_PROFILE, Profile, profile
from .schema import SchemaSet
from .server import DEFAULT_MAX_OUTBOUND, Server
from .systemd import Notifier, PassedSocket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartupBlockdev:
    """A node to create at start-up, as ``--blockdev`` gave it."""

    #: The option as written, for error messages.
    text: str
    #: ``blockdev-add`` arguments: typed (JSON syntax) or all strings (keyval).
    options: Mapping[str, Any]
    #: True for the key=value syntax: the schema gives the strings their types.
    keyval: bool = False


@dataclass
class Config:
    sockets: Sequence[Path]
    socket_mode: int = 0o600
    pidfile: Path | None = None
    max_outbound: int = DEFAULT_MAX_OUTBOUND
    allow_paths: Sequence[Path] = field(default_factory=list)
    shutdown_deadline: float = 1.0
    job_cancel_deadline: float = 5.0
    #: Listening sockets passed by the service manager (socket activation).
    passed_sockets: Sequence[PassedSocket] = field(default_factory=list)
    #: Where to send readiness and status (systemd's ``NOTIFY_SOCKET``).
    notify_socket: str | None = None
    #: Nodes to create at start-up, in order, as blockdev-add creates them.
    blockdevs: Sequence[StartupBlockdev] = field(default_factory=list)
    #: The QEMU release to emulate (a name in :data:`qmpjobd.profile.PROFILES`).
    qemu_version: str = DEFAULT_PROFILE
    #: "system", or "virtual": time moves only when x-qmpjobd-advance-clock says so.
    clock: str = "system"
    #: Where a virtual clock starts (seconds since the Unix epoch).
    clock_epoch: float = DEFAULT_EPOCH
    #: Where the ledger and the event journal live; None: nothing is written.
    state_dir: Path | None = None
    #: Event journal retention: a count and an age in seconds.
    journal_max_events: int = DEFAULT_MAX_EVENTS
    journal_max_age: float = DEFAULT_MAX_AGE
    #: QEMU's -compat policy for deprecated and unstable interfaces.
    compat: CompatPolicy = ACCEPT_ALL


class _StartupControl:
    """The session of a command run from the command line: there is none."""

    def enter_command_mode(self, capabilities: list[str]) -> None:
        raise AssertionError("qmp_capabilities is not run at start-up")

    def after_reply(self, callback: Callable[[], None]) -> None:
        callback()


class App:
    """One daemon instance."""

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        if clock is None:
            clock = VirtualClock(config.clock_epoch) if config.clock == "virtual" else SystemClock()
        self.clock: Clock = clock
        self.profile: Profile = profile(config.qemu_version)
        self.schemas = SchemaSet(overlay=self.profile.schema_overlay, policy=config.compat)
        self.bus = EventBus(self.clock)
        self.jobs = JobManager(
            self.bus,
            self.clock,
            self.profile.job_tables,
            drain_all_on_graph_change=self.profile.drain_all_on_graph_change,
        )
        self.jobs.add_listener(BlockJobEvents(self.bus))
        self.graph = BlockGraph(
            allow_paths=list(config.allow_paths) or None,
            show_active=self.profile.node_active,
            protocol_info=self.profile.protocol_format_specific,
        )
        self.graph.on_change = self.jobs.graph_changed
        self.blockjobs = BlockJobService(
            self.jobs,
            self.graph,
            txn_start_reversed=self.profile.txn_start_reversed,
            txn_grouped_checked_first=self.profile.txn_grouped_checked_first,
        )
        # -- the ledger and the event journal (see qmpjobd.ledger) --
        self.ledger: Ledger | None = None
        if config.state_dir is not None:
            self.ledger = Ledger(
                config.state_dir,
                max_events=config.journal_max_events,
                max_age=config.journal_max_age,
                now=self.clock.wall,
            )
        self.journal = Journal(
            self.clock.wall,
            ledger=self.ledger,
            max_events=config.journal_max_events,
            max_age=config.journal_max_age,
            # A virtual clock's timestamps are handed out once each: look, don't take.
            start=self.clock.peek() if isinstance(self.clock, VirtualClock) else self.clock.wall(),
        )
        if self.ledger is None:
            self.bus.subscribe(self.journal.append)
        self._stop = asyncio.Event()
        self._stop_reason = "quit"
        self._pidfile = PidFile(config.pidfile) if config.pidfile is not None else None
        self._notifier: Notifier | None = None
        self._status_scheduled = False
        self._last_status = ""
        #: Set once every socket listens.
        self.started = asyncio.Event()
        self.core = CoreContext(
            version=protocol.version_info(self.profile.qemu_version),
            schemas=self.schemas,
            prepare_quit=self.prepare_quit,
            request_stop=self.request_stop,
        )
        # Extensions (x-qmpjobd-*): holds, faults, job history.
        self.control = Control(self.jobs, self.graph, self.bus, self.clock)
        commands: list[tuple[str, Handler]] = [
            *blockjob_commands(self.blockjobs),
            *block_commands(self.graph),
            *job_commands(self.jobs, actively_synced=self.profile.mirror_actively_synced),
            *core_commands(self.core),
            *control_commands(self.control),
            *journal_commands(self.journal),
        ]
        if self.profile.commands is not None:
            # The extensions (x-qmpjobd-*) are there whatever the release.
            commands = [
                (name, h)
                for name, h in commands
                if name in self.profile.commands or name.startswith("x-qmpjobd-")
            ]
        commands = [(name, h) for name, h in commands if name not in self.profile.exclude]
        commands = attributed(self.control, commands)
        virtual = self.control.clock.virtual
        if virtual is not None:
            commands = settled(self.control, commands)
            self.graph._ctx.sleep = virtual.sleep  # latency-ns on the virtual clock
        if self.ledger is not None:
            commands = guarded(commands, self._ledger_failure)
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
            passed_sockets=config.passed_sockets,
            sessions_changed=self._status_changed,
            greeting=protocol.greeting(self.profile.qemu_version),
        )
        if self.ledger is not None:
            self.server.before_write = self.ledger.commit

    async def prepare_quit(self) -> None:
        """What ``quit`` does before its reply: every job cancelled, newest first.

        Jobs get a bounded time to wind down; a job stuck in I/O must not keep
        the daemon from exiting (shutdown stops whatever is left).
        """
        self.control.holds.release_all()  # no job may wait at a hold now
        try:
            await asyncio.wait_for(self.jobs.cancel_all(), self.config.job_cancel_deadline)
        except TimeoutError:
            log.warning("jobs did not finish cancelling in time; stopping them")

    def request_stop(self, reason: str = "quit") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    async def start(self) -> None:
        """Lock the pid file, listen, create the start-up nodes, write the pid
        file, in that order.

        :raise ConfigError: one line naming what failed and why; whatever was
            set up before the failure is undone (no file is left behind).
        """
        try:
            if self._pidfile is not None:
                # First: a second daemon with the same pid file stops here.
                self._pidfile.lock()
            snapshot = self.ledger.open() if self.ledger is not None else None
            for folder in self.config.allow_paths:
                if not folder.is_dir():
                    reason = "Not a directory" if folder.exists() else "No such file or directory"
                    raise ConfigError(f"--allow-path {folder}: {reason}")
            await self.server.start()
            for blockdev in self.config.blockdevs:
                self._add_startup_node(blockdev)
            if snapshot is not None:
                self._restore(snapshot)
            if self._pidfile is not None:
                self._pidfile.write()
        except BaseException:
            await self.server.close(0.0)
            self.graph.close()
            if self.ledger is not None:
                self.ledger.close()
            if self._pidfile is not None:
                self._pidfile.release()
            raise
        if self.config.notify_socket is not None:
            self._notifier = Notifier(self.config.notify_socket)
            self.bus.subscribe(self._job_event)
        self.started.set()
        version = self.profile.release
        log.info(
            "qmpjobd %s (QEMU %s) started, pid %d, listening on %s",
            __version__,
            version,
            os.getpid(),
            ", ".join(self.server.addresses()),
        )
        self._last_status = self.status(nodes=False)
        self._notify(f"READY=1\nSTATUS={self._last_status}")

    # -- the ledger ----------------------------------------------------------

    def _restore(self, snapshot: Snapshot) -> None:
        """Rebuild the recorded nodes and jobs, then record from now on.

        A command-line node wins over a recorded one with its name; a node
        that cannot be reopened is logged and forgotten. Jobs that had not
        concluded come back concluded with an error (published, journaled).
        """
        ledger = self.ledger
        assert ledger is not None
        self.bus.resume_after(snapshot.last_timestamp)
        # The ledger itself is the journal's sink (one call less per event).
        self.bus.subscribe(ledger.append_event)
        recorder = Recorder(ledger, _nodes_of)
        for name, options in snapshot.nodes:
            if name in self.graph:
                log.warning(
                    "state directory: node %r is given on the command line; "
                    "the recorded one is dropped",
                    name,
                )
                ledger.delete_node(name)
                continue
            try:
                self.graph.add(options)
            except QMPError as exc:
                log.error(
                    "state directory: node %r cannot be reopened (%s); it is dropped",
                    name,
                    exc.desc,
                )
                ledger.delete_node(name)
        self.graph.observers.append(recorder)
        self.jobs.add_listener(recorder)
        for record in snapshot.jobs:
            try:
                restore_job(self.jobs, record)
            except ValueError as exc:
                log.error("state directory: job %r cannot be restored (%s)", record.id, exc)
                ledger.delete_job(record.id)
        if snapshot.nodes or snapshot.jobs:
            log.info(
                "state directory %s: %d node%s, %d job%s restored",
                ledger.path,
                len(self.graph.nodes()),
                "s" * (len(self.graph.nodes()) != 1),
                len(snapshot.jobs),
                "s" * (len(snapshot.jobs) != 1),
            )
        ledger.commit()

    def _ledger_failure(self) -> str | None:
        """Why the state directory cannot be written now (after one more try)."""
        ledger = self.ledger
        if ledger is None or ledger.error is None:
            return None
        ledger.commit()
        return ledger.error

    def _add_startup_node(self, blockdev: StartupBlockdev) -> None:
        """Run the ``blockdev-add`` command itself: its schema checks, its handler.

        :raise ConfigError: ``--blockdev TEXT: `` and QEMU's text.
        """
        try:
            options = dict(blockdev.options)
            if blockdev.keyval:
                options = self.schemas.keyval_arguments("blockdev-add", options)
            request = protocol.Request("blockdev-add", options, protocol.NO_ID, False)
            command = self.command_table.lookup(request)
            result = command.handler(_StartupControl(), request.arguments)
            if inspect.iscoroutine(result):  # settling (virtual clock): nothing runs yet
                result.close()
        except QMPError as exc:
            raise ConfigError(f"--blockdev {blockdev.text}: {exc.desc}") from None

    async def shutdown(self) -> None:
        self._notify("STOPPING=1")
        self.server.stop_accepting()
        # No command may start (or go on) while the jobs wind down.
        if not await self.server.dispatcher.close(self.config.job_cancel_deadline):
            log.warning("a command was still running at shutdown")
        if self.ledger is None:
            await self.prepare_quit()
        # With a ledger, jobs are not cancelled: their records stay, and they
        # come back concluded, with the error that says the daemon stopped.
        await self.server.close(self.config.shutdown_deadline)
        await self.jobs.aclose()
        self.graph.close()
        if self.ledger is not None:
            self.ledger.close()
        if self._pidfile is not None:
            self._pidfile.release()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None

    # -- status --------------------------------------------------------------

    def status(self, *, nodes: bool = True) -> str:
        """One line: monitors, jobs by status and (with *nodes*) block nodes."""
        monitors = len(self.server.sessions)
        counts = Counter(job.status.value for job in self.jobs.jobs_newest_first())
        jobs = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
        line = f"{monitors} monitor{'s' * (monitors != 1)}; jobs: {jobs}"
        if nodes:
            count = len(self.graph.nodes())
            line += f"; {count} block node{'s' * (count != 1)}"
        return line

    def _notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.send(message)

    def _job_event(self, event: Event) -> None:
        if event.name == "JOB_STATUS_CHANGE":
            self._status_changed()

    def _status_changed(self) -> None:
        """Tell the service manager the new status, once per pass of the loop."""
        if self._notifier is None or self._status_scheduled:
            return
        self._status_scheduled = True
        asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_scheduled = False
        status = self.status(nodes=False)
        if status != self._last_status:
            self._last_status = status
            self._notify(f"STATUS={status}")

    def _log_status(self) -> None:
        log.info("status: %s", self.status())

    # -- run -----------------------------------------------------------------

    async def serve_until_stopped(self) -> None:
        """After :meth:`start`: serve until ``quit`` or :meth:`request_stop`,
        then shut down (no signal handlers: a daemon in a test's thread)."""
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def run(self) -> None:
        """Serve until SIGTERM, SIGINT, SIGHUP or ``quit``; SIGUSR1 logs the status."""
        loop = asyncio.get_running_loop()
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        installed: list[signal.Signals] = []
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(signum, self.request_stop, signum.name)
                installed.append(signum)
            loop.add_signal_handler(signal.SIGUSR1, self._log_status)
            installed.append(signal.SIGUSR1)
            await self.start()
            try:
                await self._stop.wait()
                log.info("stopping (%s)", self._stop_reason)
            finally:
                await self.shutdown()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)


def _nodes_of(job: Job) -> tuple[str, ...]:
    """The names of the nodes a block job uses, for its record."""
    driver = job.driver
    if isinstance(driver, BlockJobDriver):
        return tuple(node.node_name for node in driver.nodes)
    return ()
