"""Protocol-level commands: negotiation, versions, introspection, quit."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CommandNotFoundError
from ..schema import SchemaSet
from . import Handler, SessionControl


@dataclass
class CoreContext:
    """What the core commands need from the daemon."""

    #: ``query-version``'s result (the profile's release).
    version: dict[str, Any]
    schemas: SchemaSet
    #: Cancels every job, then returns; the daemon stops once the reply is sent.
    prepare_quit: Callable[[], Awaitable[None]]
    request_stop: Callable[[], None]
    #: Filled in once every table is built: names for query-commands, newest first.
    command_names: list[str] = field(default_factory=list)
    event_names: list[str] = field(default_factory=list)
    _introspection: list[dict[str, Any]] | None = None

    def introspection(self) -> list[dict[str, Any]]:
        if self._introspection is None:
            self._introspection = self.schemas.introspect(
                list(reversed(self.command_names)), self.event_names
            )
        return self._introspection


def negotiation_commands(ctx: CoreContext) -> list[tuple[str, Handler]]:
    def qmp_capabilities(session: SessionControl, args: dict[str, Any]) -> Any:
        session.enter_command_mode(list(args.get("enable", ())))
        return {}

    return [("qmp_capabilities", qmp_capabilities)]


def core_commands(ctx: CoreContext) -> list[tuple[str, Handler]]:
    def qmp_capabilities(session: SessionControl, args: dict[str, Any]) -> Any:
        raise CommandNotFoundError("Capabilities negotiation is already complete, command ignored")

    def query_version(session: SessionControl, args: dict[str, Any]) -> Any:
        return copy.deepcopy(ctx.version)

    def query_commands(session: SessionControl, args: dict[str, Any]) -> Any:
        return [{"name": name} for name in ctx.command_names]

    def query_qmp_schema(session: SessionControl, args: dict[str, Any]) -> Any:
        return ctx.introspection()

    async def quit_(session: SessionControl, args: dict[str, Any]) -> Any:
        await ctx.prepare_quit()
        session.after_reply(ctx.request_stop)
        return {}

    return [
        ("qmp_capabilities", qmp_capabilities),
        ("query-version", query_version),
        ("query-commands", query_commands),
        ("quit", quit_),
        ("query-qmp-schema", query_qmp_schema),
    ]
