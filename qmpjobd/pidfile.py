"""A pid file locked as QEMU locks it, so that two daemons cannot share one.

The file is opened (created if missing) and locked with a POSIX record lock
first thing at start-up, and written once the daemon listens; a second
daemon given the same file fails to lock it and refuses to start before it
touches anything else. At exit the file is removed only if it is still the
one we locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import ConfigError


class PidFile:
    """A locked pid file; :meth:`release` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def lock(self) -> None:
        """Create and lock the file.

        :raise ConfigError: QEMU's texts, e.g. "cannot create PID file:
            Cannot lock pid file: Resource temporarily unavailable".
        """
        path = self.path
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create PID file: Could not create '{path}': {exc.strerror}"
                ) from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise ConfigError(
                    f"cannot create PID file: Cannot lock pid file: {exc.strerror}"
                ) from None
            # The file may have been removed (by its previous owner, exiting)
            # between our open and our lock: then lock the new one.
            st = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                os.close(fd)
                continue
            if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                continue
            break
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)

    def write(self, pid: int | None = None) -> None:
        """Write our pid (or *pid*) into the locked file.

        :raise ConfigError: the write failed.
        """
        fd = self._fd
        assert fd is not None, "lock() first"
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid() if pid is None else pid}\n".encode())
        except OSError as exc:
            self.release()
            raise ConfigError(
                f"cannot create PID file: Failed to write pid file: {exc.strerror}"
            ) from None

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        self._identity = None
