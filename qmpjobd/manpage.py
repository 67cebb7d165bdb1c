"""qmpjobd(8), written from the command line parser that --help prints.

``python -m qmpjobd.manpage`` prints the page; ``--write`` regenerates the
copy shipped with the package (``qmpjobd/man/qmpjobd.8``), which a test
keeps identical to what this module renders.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from . import EMULATED_QEMU_VERSION, __version__
from .cli import build_parser

#: The shipped page, installed with the package.
PAGE = Path(__file__).parent / "man" / "qmpjobd.8"
#: The date on the page: when its text last changed, not when it was built.
PAGE_DATE = date(2026, 12, 5)

_QEMU = ".".join(map(str, EMULATED_QEMU_VERSION))

#: Sections --help has no room for, as (title, paragraphs).
_SECTIONS: list[tuple[str, list[str]]] = [
    (
        "SIGNALS",
        [
            "SIGTERM, SIGINT and SIGHUP stop the daemon: jobs are cancelled (and given"
            " at most 5 seconds to finish), monitors are closed, the socket files and the pid file"
            " are removed, and the daemon exits 0. The quit command does the same.",
            "SIGUSR1 logs one status line: monitors, jobs by status, block nodes.",
            "SIGPIPE is ignored.",
        ],
    ),
    (
        "SYSTEMD",
        [
            "With socket activation (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set by"
            " systemd) the daemon serves the sockets it is passed, and leaves their files"
            " to systemd; --socket is then optional, and a --socket naming a passed socket"
            " uses it. With NOTIFY_SOCKET set (Type=notify) it reports READY=1 once it"
            " listens, STATUS= lines with its monitors and jobs, and STOPPING=1.",
            "When stderr is the journal (JOURNAL_STREAM), log lines carry syslog"
            " priorities instead of timestamps.",
            "Example units: contrib/systemd/qmpjobd.socket and qmpjobd.service in the source tree.",
        ],
    ),
    (
        "LOGGING",
        [
            "Logs go to stderr. At the default level, info, the daemon logs one line when"
            " it has started (version, pid, sockets) and one when it stops. A monitor"
            " disconnected for not reading its replies, and an image path refused by"
            " --allow-path, are logged at warning; connects, disconnects and every"
            " command with its result at debug.",
        ],
    ),
    (
        "EXIT STATUS",
        [
            "0 after a stop signal or the quit command. 1 when the daemon cannot start:"
            " it prints one line naming what failed and why, and leaves no file behind.",
        ],
    ),
    (
        "STANDARDS",
        [
            f"QMP as QEMU {_QEMU} speaks it, and QEMU {_QEMU}'s block job API.",
        ],
    ),
    ("SEE ALSO", ["qemu-storage-daemon(1), systemd.socket(5), systemd.service(5)"]),
]


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _invocation(action: argparse.Action, *, synopsis: bool = False) -> str:
    """``\\fB\\-\\-socket\\fR \\fIPATH\\fR``: how an option is written (in the
    synopsis, by its longest name only)."""
    names = ", ".join(
        f"\\fB{_escape(name)}\\fR"
        for name in ([max(action.option_strings, key=len)] if synopsis else action.option_strings)
    )
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    assert isinstance(metavar, str)
    return f"{names} \\fI{_escape(metavar)}\\fR"


def _groups(
    parser: argparse.ArgumentParser,
) -> list[tuple[argparse._ArgumentGroup, list[argparse.Action]]]:
    """Each group of options with its options, as --help lists them."""
    # argparse has no public list of its groups and actions; --help reads these.
    return [
        (group, actions)
        for group in parser._action_groups
        if (
            actions := [
                a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS
            ]
        )
    ]


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": parser.prog}
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The man page, in roff."""
    parser = build_parser() if parser is None else parser
    out = [
        f'.TH QMPJOBD 8 "{PAGE_DATE.isoformat()}" "qmpjobd {__version__}" "System Administration"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"qmpjobd \\- {_escape(parser.description or '')}",
        ".SH SYNOPSIS",
        ".B qmpjobd",
    ]
    groups = _groups(parser)
    for action in groups[0][1]:
        if action.dest == "help":
            continue
        out.append(f"[{_invocation(action, synopsis=True)}]")
    for group, _ in groups[1:]:
        out.append(f"[\\fI{_escape(group.title or '')}\\fR]")
    out += [
        ".SH DESCRIPTION",
        _escape(
            f"qmpjobd listens on Unix sockets and speaks QEMU's QMP protocol: every client"
            f" gets QEMU {_QEMU}'s greeting, negotiates capabilities and issues commands."
            " It implements QEMU's block job API: block nodes (null-co, file, raw,"
            " blkdebug), backup, mirror and create jobs, the job state machine, the job"
            " verbs and their events. Any number of monitors may connect to each socket;"
            " every negotiated monitor gets every event."
        ),
    ]
    if parser.epilog:
        out += [".PP", _escape(parser.epilog)]
    for i, (group, actions) in enumerate(groups):
        out.append(".SH " + ("OPTIONS" if i == 0 else _escape((group.title or "").upper())))
        if i and group.description:
            out.append(_escape(group.description))
        for action in actions:
            out += [".TP", _invocation(action), _escape(_help_text(parser, action))]
    for title, paragraphs in _SECTIONS:
        out.append(f".SH {title}")
        for i, paragraph in enumerate(paragraphs):
            if i:
                out.append(".PP")
            out.append(_escape(paragraph))
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if argv[1:] == ["--write"]:
        PAGE.parent.mkdir(exist_ok=True)
        PAGE.write_text(page)
    elif argv[1:]:
        print("usage: python -m qmpjobd.manpage [--write]", file=sys.stderr)
        return 2
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
