"""Punching holes in files: Linux's ``fallocate(2)`` with ``PUNCH_HOLE``.

A leaf of the block package: no imports of ours.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import sys
from collections.abc import Callable
from typing import cast

# Linux's fallocate(2) modes (the os module offers neither the call with a
# mode nor the flags).
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], call)


_FALLOCATE = _libc_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``length`` bytes at ``offset`` of an open file, keeping its
    size (they read as zeros).

    :raise OSError: the file system cannot (``EOPNOTSUPP``), or no such call here.
    """
    if _FALLOCATE is None:
        raise OSError(errno_mod.EOPNOTSUPP, os.strerror(errno_mod.EOPNOTSUPP))
    if _FALLOCATE(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
