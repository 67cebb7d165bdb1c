"""Command line: argparse to :class:`~qmpjobd.app.Config`, logging, run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .app import App, Config
from .errors import ConfigError


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qmpjobd",
        description="A QMP job daemon: QEMU's job API on Unix sockets.",
    )
    parser.add_argument(
        "--socket",
        dest="sockets",
        action="append",
        type=Path,
        required=True,
        metavar="PATH",
        help="Unix socket to listen on (repeatable); many monitors may connect to each",
    )
    parser.add_argument(
        "--socket-mode", type=_mode, default=0o600, metavar="MODE", help="octal (default 0600)"
    )
    parser.add_argument(
        "--pidfile", type=Path, metavar="FILE", help="written once the sockets listen"
    )
    parser.add_argument(
        "--allow-path",
        dest="allow_paths",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="restrict image files to these folders (repeatable)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error", "critical"],
    )
    parser.add_argument("-V", "--version", action="version", version=f"qmpjobd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="qmpjobd: %(levelname)s: %(name)s: %(message)s",
    )
    config = Config(
        sockets=args.sockets,
        socket_mode=args.socket_mode,
        pidfile=args.pidfile,
        allow_paths=args.allow_paths,
    )

    async def serve() -> None:
        await App(config).run()

    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"qmpjobd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
