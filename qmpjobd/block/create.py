"""Creating image files (``blockdev-create`` with the ``file`` driver).

QEMU creates the file without truncating it on open, empties it, then sizes
it according to ``preallocation``. Sizes are uint64 on the wire: a negative
number stands for its two's complement (``-1`` is 2^64-1), which no file
system accepts.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import functools
import os
from concurrent.futures import Executor

from ..errors import QMPError

PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")
_U64 = 1 << 64
_OFF_MAX = (1 << 63) - 1
_ZERO_CHUNK = 1 << 20


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno or 0)


def _resize(fd: int, size: int, preallocation: str) -> None:
    if size > _OFF_MAX:
        raise QMPError("Could not resize file: " + os.strerror(errno_mod.EINVAL))
    try:
        if preallocation == "falloc":
            os.posix_fallocate(fd, 0, size) if size else None
            os.ftruncate(fd, size)
        elif preallocation == "full":
            zeros = bytes(_ZERO_CHUNK)
            pos = 0
            while pos < size:
                n = min(len(zeros), size - pos)
                pos += os.pwrite(fd, zeros[:n], pos)
            os.ftruncate(fd, size)
        else:
            os.ftruncate(fd, size)
    except OSError as exc:
        raise QMPError("Could not resize file: " + _strerror(exc)) from exc


def create_file_sync(filename: str, size: int, preallocation: str = "off") -> None:
    """Create (or empty) ``filename`` and give it ``size`` bytes. Blocking.

    :raise QMPError: with QEMU's texts.
    """
    if preallocation not in PREALLOCATION_MODES:
        raise QMPError(f"Parameter 'preallocation' does not accept value '{preallocation}'")
    if preallocation == "metadata":
        raise QMPError("Unsupported preallocation mode: metadata")
    size %= _U64
    try:
        fd = os.open(filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise QMPError(f"Could not create '{filename}': {_strerror(exc)}") from exc
    try:
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            raise QMPError(f"Could not clear '{filename}': {_strerror(exc)}") from exc
        _resize(fd, size, preallocation)
    finally:
        os.close(fd)


async def create_file(
    filename: str, size: int, preallocation: str = "off", *, executor: Executor | None = None
) -> None:
    """:func:`create_file_sync` run off the event loop (in ``executor``)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        executor, functools.partial(create_file_sync, filename, size, preallocation)
    )
