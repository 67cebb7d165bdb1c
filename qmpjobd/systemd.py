"""systemd's socket activation and readiness protocols, without libsystemd.

- Socket activation: systemd passes listening sockets as descriptors 3, 4, ...
  with ``LISTEN_FDS`` (their count), ``LISTEN_PID`` (the pid they are meant
  for) and optionally ``LISTEN_FDNAMES`` (colon-separated names).
- Notification: ``READY=1``, ``STATUS=...`` and ``STOPPING=1`` datagrams to
  the Unix socket named by ``NOTIFY_SOCKET`` (``@`` starts an abstract name).
- Journal: stderr is connected to the journal when ``JOURNAL_STREAM`` names
  stderr's device and inode; lines may then start with ``<N>``, a syslog
  priority.

A leaf module apart from ``errors``: it knows nothing else of qmpjobd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from .errors import ConfigError

#: The first descriptor systemd passes.
LISTEN_FDS_START = 3


@dataclass(frozen=True)
class PassedSocket:
    """A listening socket passed by the service manager."""

    fd: int
    name: str


def listen_fds(environ: MutableMapping[str, str], pid: int | None = None) -> list[PassedSocket]:
    """The sockets passed to this process, taking the variables out of *environ*.

    Nothing is passed unless ``LISTEN_PID`` is this process's pid. The
    variables are removed so that no child process takes the sockets for its own.

    :raise ConfigError: the variables are malformed.
    """
    pid = os.getpid() if pid is None else pid
    count = environ.pop("LISTEN_FDS", None)
    listen_pid = environ.pop("LISTEN_PID", None)
    names_text = environ.pop("LISTEN_FDNAMES", None)
    if count is None or listen_pid is None:
        return []
    try:
        if int(listen_pid) != pid:
            return []
        n = int(count)
    except ValueError:
        raise ConfigError(
            f"invalid socket activation variables LISTEN_PID={listen_pid} LISTEN_FDS={count}"
        ) from None
    if n < 0:
        raise ConfigError(f"invalid socket activation variable LISTEN_FDS={count}")
    names = names_text.split(":") if names_text else []
    passed = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ConfigError(f"socket activation: descriptor {fd}: {exc.strerror}") from None
        passed.append(PassedSocket(fd, names[i] if i < len(names) else "unknown"))
    return passed


class Notifier:
    """Sends state changes to the service manager (``sd_notify``)."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier | None:
        """A notifier for ``NOTIFY_SOCKET``, which is taken out of *environ*."""
        address = environ.pop("NOTIFY_SOCKET", None)
        if not address or not address.startswith(("/", "@")):
            return None
        return cls(address)

    def send(self, message: str) -> None:
        """Send one datagram; a manager that is gone or busy is not waited for."""
        with contextlib.suppress(OSError):
            self._sock.sendto(message.encode(), self.address)

    def close(self) -> None:
        self._sock.close()


def stderr_is_journal(environ: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """Whether stderr is the journal stream systemd set up for us."""
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stderr_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
