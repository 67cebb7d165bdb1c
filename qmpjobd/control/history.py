"""Job history: every status change of a job, when, what caused it, and the
events sent while the job was in that status.

:class:`History` listens to the event bus. A status change is attributed to
the command (and the monitor that sent it) running when the change
happened: the command layer marks that span with :meth:`History.cause`.
A change the job makes on its own right after a command asked it for one
(a pause, a cancel, a complete) names that command; other changes of its
own (its run, its completion) name none.
A job's history starts at ``created``; the histories of the last
:data:`KEEP` job ids are kept after the jobs went away.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..errors import QMPError
from ..events import Event, EventBus

KEEP = 256


class History:
    def __init__(self, bus: EventBus) -> None:
        self._runs: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._cause: tuple[str, int | None] | None = None
        self._requested: dict[str, tuple[str, int | None]] = {}
        bus.subscribe(self._event)

    @contextlib.contextmanager
    def cause(self, command: str, monitor: int | None) -> Iterator[None]:
        """Status changes inside this block were caused by ``command`` from ``monitor``."""
        outer, self._cause = self._cause, (command, monitor)
        try:
            yield
        finally:
            self._cause = outer

    def enter(self, command: str, monitor: int | None) -> tuple[str, int | None] | None:
        """:meth:`cause` without a context manager (every command goes through
        here): returns what :meth:`leave` restores."""
        outer, self._cause = self._cause, (command, monitor)
        return outer

    def leave(self, outer: tuple[str, int | None] | None) -> None:
        self._cause = outer

    def requested(self, job_id: str, command: str, monitor: int | None) -> None:
        """``command`` acted on ``job_id`` without changing its status itself
        (a pause, a cancel, a complete): the job's next change of its own is
        its doing."""
        changes = self._runs.get(job_id)
        if changes and changes[-1]["command"] == command and changes[-1]["monitor"] == monitor:
            return
        self._requested[job_id] = (command, monitor)

    def _event(self, event: Event) -> None:
        data = event.data
        job_id = data.get("id", data.get("device"))
        if not isinstance(job_id, str):
            return
        seconds, micros = event.timestamp
        sent = {"event": event.name, "data": dict(data)}
        if event.name == "JOB_STATUS_CHANGE":
            if data.get("status") == "created":
                self._runs.pop(job_id, None)
                self._runs[job_id] = []
                while len(self._runs) > KEEP:
                    self._runs.popitem(last=False)
            changes = self._runs.get(job_id)
            if changes is None:
                return
            cause = self._cause
            if cause is None:
                cause = self._requested.pop(job_id, None)
            else:
                self._requested.pop(job_id, None)
            command, monitor = cause if cause is not None else (None, None)
            changes.append(
                {
                    "status": data.get("status"),
                    "at": {"seconds": seconds, "microseconds": micros},
                    "command": command,
                    "monitor": monitor,
                    "events": [sent],
                }
            )
        else:
            changes = self._runs.get(job_id)
            if changes:
                changes[-1]["events"].append(sent)

    def query(self, job_id: str) -> list[dict[str, Any]]:
        """:raise QMPError: no job of that id was seen."""
        changes = self._runs.get(job_id)
        if changes is None:
            raise QMPError(f"No history for job '{job_id}'")
        return [
            {k: v for k, v in change.items() if v is not None or k not in ("command", "monitor")}
            for change in changes
        ]
