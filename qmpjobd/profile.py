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

from .jobs import QEMU_7_2_TABLES, JobTables


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
    #: A folder of schema files (package-relative) laid over the base ones:
    #: a file there replaces the base file of the same command, event or type.
    schema_overlay: str | None = None

    @property
    def release(self) -> str:
        return ".".join(map(str, self.qemu_version))


QEMU_7_2: Final = Profile(name="7.2", qemu_version=(7, 2, 0), job_tables=QEMU_7_2_TABLES)

#: Every profile, by ``--qemu-version`` name.
PROFILES: Final[dict[str, Profile]] = {QEMU_7_2.name: QEMU_7_2}

#: The newest profile the differential suite proves against its live daemon.
DEFAULT_PROFILE: Final = QEMU_7_2.name


def profile(name: str) -> Profile:
    """:raise KeyError: no such profile."""
    return PROFILES[name]
