"""One in-band command at a time, across every monitor.

QEMU runs the in-band commands of all its monitors through one dispatcher,
one command after another: a command that waits (a drain, a file being
created) keeps every other monitor's next command waiting too, so no
command ever sees another one half done. qmpjobd keeps that model. A
command that completes without waiting runs straight through; one that must
wait owns the :class:`Dispatcher` until its reply is out, and sessions with
requests queued meanwhile wait their turn, in the order they asked.

Must not import: jobs, block, sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

#: The owner after :meth:`Dispatcher.close`: nobody runs commands any more.
_CLOSED: Final = object()


class Dispatcher:
    """A FIFO mutex for command execution, without a task per waiter.

    A waiter registers a wake-up callback; :meth:`release` calls the
    callbacks in order until one of them takes the dispatcher again.
    """

    __slots__ = ("_owner", "_waiting")

    def __init__(self) -> None:
        self._owner: object | None = None
        self._waiting: dict[object, Callable[[], None]] = {}

    @property
    def owner(self) -> object | None:
        """Who runs a command that waits (None when free)."""
        return self._owner

    def free_for(self, who: object) -> bool:
        """Whether ``who`` may run a command now; if not, it is woken later."""
        owner = self._owner
        return owner is None or owner is who

    def wait(self, who: object, wake: Callable[[], None]) -> None:
        """Call ``wake()`` once the dispatcher is free again (once per wait)."""
        if who not in self._waiting:
            self._waiting[who] = wake

    def forget(self, who: object) -> None:
        """``who`` went away: it no longer waits."""
        self._waiting.pop(who, None)

    def acquire(self, who: object) -> None:
        """``who`` starts a command that waits.

        :raise RuntimeError: somebody else owns the dispatcher (a bug).
        """
        if self._owner is not None and self._owner is not who:
            raise RuntimeError("dispatcher taken twice")
        self._owner = who

    def release(self, who: object) -> None:
        """``who``'s command is over: wake the waiters, oldest first."""
        if self._owner is not who:
            return
        self._owner = None
        while self._waiting and self._owner is None:
            waiter = next(iter(self._waiting))
            wake = self._waiting.pop(waiter)
            wake()

    async def close(self, timeout: float) -> bool:
        """Take the dispatcher for good (daemon shutdown).

        Waits at most ``timeout`` seconds for the command that runs now;
        returns whether it finished in time. Afterwards no command runs.
        """
        if self._owner is None:
            self._owner = _CLOSED
            return True
        if self._owner is _CLOSED:
            return True
        done = asyncio.get_running_loop().create_future()

        def take() -> None:
            self._owner = _CLOSED
            if not done.done():
                done.set_result(None)

        # Shutdown goes ahead of every monitor still waiting.
        self._waiting = {self: take, **self._waiting}
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self._waiting.pop(self, None)
            self._owner = _CLOSED
            return False
        return True
