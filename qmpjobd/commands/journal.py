"""The event journal's extension command, and the guard that refuses changes
the state directory cannot record.

``x-qmpjobd-query-events`` (feature ``unstable``) takes ``{"since": TIMESTAMP}``,
the ``timestamp`` object of the last event the client saw, and returns
``{"events": [...], "gap": BOOL}``: the events after it, each exactly as it
went out on the wire, oldest first; ``gap`` is true when some events after
the cursor are no longer kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..errors import QMPError
from ..ledger import Journal
from ..protocol import event_message
from . import Handler, SessionControl

QUERY_EVENTS = "x-qmpjobd-query-events"

#: Commands that change nothing a ledger records.
READ_ONLY = frozenset(
    {
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
        "quit",
        QUERY_EVENTS,
    }
)


def journal_commands(journal: Journal) -> list[tuple[str, Handler]]:
    async def query_events(session: SessionControl, args: dict[str, Any]) -> Any:
        since = args["since"]
        read = await journal.read((since["seconds"], since["microseconds"]))
        return {"events": [event_message(e) for e in read.events], "gap": read.gap}

    return [(QUERY_EVENTS, query_events)]


def guarded(
    commands: Iterable[tuple[str, Handler]], failure: Callable[[], str | None]
) -> list[tuple[str, Handler]]:
    """Refuse commands that change state while ``failure()`` says why the
    state directory cannot be written ("Cannot record the change: REASON")."""

    def guard(handler: Handler) -> Handler:
        def run(session: SessionControl, args: dict[str, Any]) -> Any:
            reason = failure()
            if reason is not None:
                raise QMPError(f"State directory cannot be written: {reason}")
            return handler(session, args)

        return run

    return [
        (name, handler if name in READ_ONLY or name.startswith("query-") else guard(handler))
        for name, handler in commands
    ]
