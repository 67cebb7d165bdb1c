"""QEMU version profiles: everything that depends on the release qmpjobd emulates.

A :class:`Profile` is chosen once, at start-up, and handed down from the
composition root: the release the greeting and ``query-version`` report, the
job state machine's tables, the commands the release has, the schema files
laid over the base ones, and the switches for behaviour that differs
between releases. Code below the composition root never asks which release
it runs: it is given the profile's values.

Must not import: sockets, session, server, commands, app, cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .jobs import QEMU_7_2_TABLES, QEMU_10_0_TABLES, JobTables


@dataclass(frozen=True, slots=True)
class Profile:
    """One emulated QEMU release."""

    #: How ``--qemu-version`` names it.
    name: str
    #: What the greeting and ``query-version`` report (``x.y.0``).
    qemu_version: tuple[int, int, int]
    #: The job state machine.
    job_tables: JobTables
    #: The commands this release has, of those qmpjobd implements (None: all).
    commands: frozenset[str] | None = None
    #: The commands of qmpjobd's this release does not have.
    exclude: frozenset[str] = frozenset()
    #: A folder of schema files (package-relative) laid over the base ones:
    #: a file there replaces the base file of the same command, event or type.
    schema_overlay: str | None = None

    # -- behaviour that differs between releases ------------------------------

    #: query-block-jobs: mirror entries carry ``actively-synced`` (8.2).
    mirror_actively_synced: bool = False
    #: query-named-block-nodes: every node has ``active`` (10.0).
    node_active: bool = False
    #: query-named-block-nodes: a ``file`` node's image has ``format-specific``
    #: (8.0's ImageInfoSpecificFile).
    protocol_format_specific: bool = False
    #: transaction: the jobs start in reverse action order (8.1's generic
    #: Transaction API runs its commit list last-in first-out).
    txn_start_reversed: bool = False
    #: transaction: completion-mode grouped is refused before any action
    #: runs unless every action is a backup (8.1); before, only inside the
    #: actions that check it.
    txn_grouped_checked_first: bool = False
    #: Every change of the block graph drains every node (8.x's graph lock):
    #: each running or ready job shows paused/running or standby/ready once
    #: per section, whatever nodes it uses.
    drain_all_on_graph_change: bool = False

    @property
    def release(self) -> str:
        return ".".join(map(str, self.qemu_version))


#: The commands of qmpjobd's that QEMU 7.2 lacks.
_NEWER_COMMANDS: Final = frozenset({"block-job-change", "blockdev-set-active"})

QEMU_7_2: Final = Profile(
    name="7.2", qemu_version=(7, 2, 0), job_tables=QEMU_7_2_TABLES, exclude=_NEWER_COMMANDS
)

QEMU_10_0: Final = Profile(
    name="10.0",
    qemu_version=(10, 0, 0),
    job_tables=QEMU_10_0_TABLES,
    schema_overlay="10.0",
    mirror_actively_synced=True,
    node_active=True,
    protocol_format_specific=True,
    txn_start_reversed=True,
    txn_grouped_checked_first=True,
    drain_all_on_graph_change=True,
)

#: Every profile, by ``--qemu-version`` name.
PROFILES: Final[dict[str, Profile]] = {p.name: p for p in (QEMU_7_2, QEMU_10_0)}

#: The newest profile the differential suite proves against its live daemon.
DEFAULT_PROFILE: Final = QEMU_10_0.name


def profile(name: str) -> Profile:
    """:raise KeyError: no such profile."""
    return PROFILES[name]
