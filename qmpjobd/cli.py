"""Command line: argparse to :class:`~qmpjobd.app.Config`, logging, run.

Also the process-level parts of being a daemon: ``--daemonize`` (the parent
exits once the child has started, with the child's start-up error if it
fails), the environment systemd passes (activated sockets, the notification
socket, the journal), and start-up errors as one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__, systemd, wire
from .app import App, Config, StartupBlockdev
from .clock import DEFAULT_EPOCH
from .compat import CompatPolicy
from .errors import ConfigError
from .keyval import parse_keyval, parse_opts
from .ledger import DEFAULT_MAX_AGE, DEFAULT_MAX_EVENTS
from .profile import DEFAULT_PROFILE, PROFILES

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: syslog priorities of the logging levels, for lines read by the journal.
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1, like any
    other start-up failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message}\n")


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qmpjobd",
        description="A QMP job daemon: QEMU's job API on Unix sockets.",
        epilog=(
            "The daemon runs until SIGTERM, SIGINT, SIGHUP or the quit command, and exits 0;"
            " SIGUSR1 logs its status. Under systemd it takes the sockets passed by socket"
            " activation and reports readiness and status (Type=notify)."
        ),
    )
    parser.add_argument(
        "--socket",
        dest="sockets",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="Unix socket to listen on (repeatable); many monitors may connect to each."
        " A stale socket file is replaced; a live one is refused. Required unless"
        " sockets are passed by socket activation",
    )
    parser.add_argument(
        "--socket-mode",
        type=_mode,
        default=0o600,
        metavar="MODE",
        help="octal permissions of the socket files (default 0600)",
    )
    parser.add_argument(
        "--pidfile",
        type=Path,
        metavar="FILE",
        help="write the daemon's pid here once every socket listens; the file is locked,"
        " so a second daemon with the same file refuses to start; removed at exit",
    )
    parser.add_argument(
        "--allow-path",
        dest="allow_paths",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="restrict image files to these existing folders (repeatable)",
    )
    parser.add_argument(
        "--qemu-version",
        default=DEFAULT_PROFILE,
        choices=sorted(PROFILES),
        metavar="VERSION",
        help=f"the QEMU release to behave as: {', '.join(sorted(PROFILES))}"
        f" (default {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--compat",
        default="",
        metavar="POLICY",
        help="QEMU's -compat policy, comma-separated KEY=VALUE: deprecated-input and "
        "unstable-input take accept, reject or crash; deprecated-output and "
        "unstable-output take accept or hide (default: accept everything)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="one of debug, info (default), warning, error, critical; in any case",
    )
    parser.add_argument(
        "--daemonize",
        action="store_true",
        help="run in the background; the command returns once the daemon listens,"
        " or fails with its start-up error",
    )
    parser.add_argument(
        "--clock",
        choices=("system", "virtual"),
        default="system",
        help="system (default), or virtual: time moves only when the"
        " x-qmpjobd-advance-clock command says so, and the daemon settles after every"
        " command, so a test script gives the same transcript on every run",
    )
    parser.add_argument(
        "--clock-epoch",
        type=float,
        default=DEFAULT_EPOCH,
        metavar="SECONDS",
        help=f"where the virtual clock starts, in seconds since 1970 (default {DEFAULT_EPOCH})",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the block nodes, the jobs and the event journal in DIR (created"
        " 0700, locked: one daemon per directory); after a restart, nodes are reopened"
        " and jobs not yet dismissed are listed, concluded. Without it nothing is written",
    )
    parser.add_argument(
        "--journal-max-events",
        type=_positive_int,
        default=DEFAULT_MAX_EVENTS,
        metavar="N",
        help=f"keep at most N events in the event journal (default {DEFAULT_MAX_EVENTS})",
    )
    parser.add_argument(
        "--journal-max-age",
        type=_positive_float,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"keep events at most SECONDS old in the event journal (default {DEFAULT_MAX_AGE:g})",
    )
    parser.add_argument("-V", "--version", action="version", version=f"qmpjobd {__version__}")
    qsd = parser.add_argument_group(
        "qemu-storage-daemon options",
        "qemu-storage-daemon's command line works too: a script that starts"
        " qemu-storage-daemon with these options (and --pidfile, --daemonize) starts"
        " qmpjobd by changing only the program name.",
    )
    qsd.add_argument(
        "--blockdev",
        dest="blockdevs",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="create a block node at start-up, as blockdev-add does; OPTIONS is"
        " [driver=]DRIVER,node-name=NODE,... (',,' for a comma, dotted keys for nested"
        " options) or a JSON object (repeatable)",
    )
    qsd.add_argument(
        "--chardev",
        dest="chardevs",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="a Unix socket for a --monitor: socket,id=ID,path=PATH,server=on,wait=off"
        " (repeatable)",
    )
    qsd.add_argument(
        "--monitor",
        dest="monitors",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="serve QMP on a chardev's socket, like --socket: [chardev=]ID[,mode=control]"
        " (repeatable)",
    )
    for option in ("--export", "--nbd-server", "--object"):
        qsd.add_argument(
            option,
            dest=option[2:].replace("-", "_"),
            action="append",
            default=[],
            metavar="OPTIONS",
            help="not implemented: refused with an error",
        )
    return parser


_ON = frozenset({"on", "yes", "true", "y"})
_OFF = frozenset({"off", "no", "false", "n"})
_CHARDEV_KEYS = frozenset({"backend", "id", "path", "server", "wait"})
_MONITOR_KEYS = frozenset({"chardev", "mode", "pretty", "id"})


def _chardev(text: str) -> tuple[str, Path]:
    """``--chardev socket,id=ID,path=PATH,server=on,wait=off``: its id and path."""
    opts = parse_opts(text, "backend")
    backend = opts.get("backend", "")
    if backend != "socket":
        raise ConfigError(f"chardev backend '{backend}' is not implemented (only socket)")
    for key in opts:
        if key not in _CHARDEV_KEYS:
            if key in ("host", "port", "fd", "abstract"):
                raise ConfigError("only Unix socket chardevs (path=PATH) are implemented")
            raise ConfigError(f"Parameter '{key}' is not implemented")
    if "id" not in opts:
        raise ConfigError("Parameter 'id' is missing")
    if "path" not in opts:
        raise ConfigError("only Unix socket chardevs (path=PATH) are implemented")
    if opts.get("server", "off") not in _ON:
        raise ConfigError("only server=on is implemented")
    if opts.get("wait", "on") not in _OFF:
        raise ConfigError("only wait=off is implemented")
    return opts["id"], Path(opts["path"])


def _monitor(text: str, chardevs: dict[str, Path]) -> str:
    """``--monitor [chardev=]ID[,mode=control]``: the chardev's id."""
    opts = parse_opts(text, "chardev")
    for key in opts:
        if key not in _MONITOR_KEYS:
            raise ConfigError(f"Parameter '{key}' is not implemented")
    if opts.get("mode", "control") != "control":
        raise ConfigError("Only QMP is supported")
    if opts.get("pretty", "off") not in _OFF:
        raise ConfigError("pretty=on is not implemented")
    name = opts.get("chardev")
    if name is None:
        raise ConfigError("Parameter 'chardev' is missing")
    if name not in chardevs:
        raise ConfigError(f'chardev "{name}" not found')
    return name


def _blockdev(text: str) -> StartupBlockdev:
    """``--blockdev``, in either of QEMU's syntaxes."""
    if not text.startswith("{"):
        return StartupBlockdev(text, parse_keyval(text, "driver"), keyval=True)
    decoder = wire.Decoder()
    values = [*decoder.feed(text.encode()), *decoder.feed_eof()]
    for value in values:
        if isinstance(value, wire.ParseError):
            raise ConfigError(value.desc)
    if len(values) != 1 or not isinstance(values[0], dict):
        raise ConfigError("Expected a single JSON object")
    return StartupBlockdev(text, values[0])


def qsd_options(args: argparse.Namespace) -> tuple[list[Path], list[StartupBlockdev]]:
    """qemu-storage-daemon's options: the monitors' socket paths, the start-up nodes.

    :raise ConfigError: ``--OPTION TEXT: reason``, QEMU's way.
    """
    for name in ("export", "nbd_server", "object"):
        values: list[str] = getattr(args, name)
        if values:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} {values[0]}: {option} is not implemented")
    chardevs: dict[str, Path] = {}
    texts: dict[str, str] = {}
    for text in args.chardevs:
        try:
            name, path = _chardev(text)
            if name in chardevs:
                raise ConfigError(f"Duplicate ID '{name}' for chardev")
        except ConfigError as exc:
            raise ConfigError(f"--chardev {text}: {exc}") from None
        chardevs[name] = path
        texts[name] = text
    sockets: list[Path] = []
    used: set[str] = set()
    for text in args.monitors:
        try:
            name = _monitor(text, chardevs)
            if name in used:
                raise ConfigError(f"Device '{name}' is in use")
        except ConfigError as exc:
            raise ConfigError(f"--monitor {text}: {exc}") from None
        used.add(name)
        sockets.append(chardevs[name])
    for name, text in texts.items():
        if name not in used:
            raise ConfigError(
                f"--chardev {text}: only chardevs used by a --monitor are implemented"
            )
    blockdevs = []
    for text in args.blockdevs:
        try:
            blockdevs.append(_blockdev(text))
        except ConfigError as exc:
            raise ConfigError(f"--blockdev {text}: {exc}") from None
    return sockets, blockdevs


class _Formatter(logging.Formatter):
    """``2026-01-31 12:00:00.000 qmpjobd: warning: ...``, or ``<4>warning: ...``
    when the journal reads the lines (it keeps its own timestamps)."""

    def __init__(self, journal: bool) -> None:
        super().__init__(
            "%(message)s" if journal else "%(asctime)s.%(msecs)03d qmpjobd: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = record.levelname.lower()
        if self.journal:
            priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{priority}>{level}: {line}" for line in text.split("\n"))
        if not self.usesTime():
            return text
        stamp, _, rest = text.partition(" qmpjobd: ")
        return f"{stamp} qmpjobd: {level}: {rest}"


def setup_logging(level: str, *, journal: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # asyncio's own debug lines ("Using selector: ...") say nothing to an operator.
    logging.getLogger("asyncio").setLevel(max(root.level, logging.INFO))


def make_config(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    """The daemon's configuration, from the arguments and systemd's variables.

    :raise ConfigError: nothing to listen on, or malformed activation variables.
    """
    monitor_sockets, blockdevs = qsd_options(args)
    sockets = [*args.sockets, *monitor_sockets]
    passed = systemd.listen_fds(environ)
    if not sockets and not passed:
        raise ConfigError("no socket to listen on: give --socket PATH")
    notify = environ.pop("NOTIFY_SOCKET", None)
    return Config(
        # Absolute, so that what we remove at exit is what we created.
        sockets=[Path(os.path.abspath(p)) for p in sockets],
        blockdevs=blockdevs,
        socket_mode=args.socket_mode,
        pidfile=Path(os.path.abspath(args.pidfile)) if args.pidfile is not None else None,
        allow_paths=[Path(os.path.abspath(p)) for p in args.allow_paths],
        passed_sockets=passed,
        notify_socket=notify if notify and notify.startswith(("/", "@")) else None,
        qemu_version=args.qemu_version,
        clock=args.clock,
        clock_epoch=args.clock_epoch,
        state_dir=Path(os.path.abspath(args.state_dir)) if args.state_dir is not None else None,
        journal_max_events=args.journal_max_events,
        journal_max_age=args.journal_max_age,
        compat=_compat(args.compat),
    )


def _compat(text: str) -> CompatPolicy:
    """:raise ConfigError: ``--compat TEXT: `` and QEMU's text."""
    try:
        return CompatPolicy.parse(text)
    except ValueError as exc:
        raise ConfigError(f"--compat {text}: {exc}") from None


def _daemonize() -> int:
    """Fork into the background (twice, with a new session in between).

    Returns, in the daemon, the pipe to write one byte to once it has
    started; the original process never returns: it exits 0 once that byte
    arrives, or 1 if the daemon exits first (having printed its error).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        ready = os.read(read_end, 1)
        os.waitpid(pid, 0)
        os._exit(0 if ready == b"\0" else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return write_end


def _detach(ready_fd: int) -> None:
    """Tell the waiting parent we have started; let go of the terminal."""
    os.write(ready_fd, b"\0")
    os.close(ready_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir("/")


async def _serve(config: Config, on_started: Callable[[], None] | None) -> None:
    app = App(config)
    run = asyncio.ensure_future(app.run())
    started = asyncio.ensure_future(app.started.wait())
    await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
    if app.started.is_set() and on_started is not None:
        on_started()
    started.cancel()
    await run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    setup_logging(args.log_level, journal=systemd.stderr_is_journal(environ))
    try:
        config = make_config(args, environ)
    except ConfigError as exc:
        print(f"qmpjobd: {exc}", file=sys.stderr)
        return 1
    # What the service manager passed is ours alone, not any child's.
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        os.environ.pop(name, None)
    on_started: Callable[[], None] | None = None
    if args.daemonize:
        ready_fd = _daemonize()

        def on_started() -> None:
            _detach(ready_fd)

    try:
        asyncio.run(_serve(config, on_started))
    except ConfigError as exc:
        print(f"qmpjobd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
