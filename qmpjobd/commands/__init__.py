"""Command tables and dispatch: the only code that knows both QMP command
names and the domain API.

A session holds one :class:`CommandTable` at a time. Negotiation mode and
command mode are two tables (swapped by ``qmp_capabilities``), not ``if``
checks. Handlers are thin: look up, call the domain, return a plain value.
A handler returns its result, or an awaitable of it for work that must wait
(``quit``, commands that drain jobs).

Must not import: sockets, asyncio streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import CommandNotFoundError, ErrorClass, QMPError
from ..protocol import NEGOTIATION_DESC, Request, command_not_found, oob_not_supported
from ..schema import CommandSchema, SchemaSet


class SessionControl(Protocol):
    """What a handler may ask of the session that runs it."""

    def enter_command_mode(self, capabilities: list[str]) -> None: ...

    def after_reply(self, callback: Callable[[], None]) -> None: ...


Handler = Callable[[SessionControl, dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler
    schema: CommandSchema


class CommandTable:
    """A set of commands a session in one mode accepts."""

    def __init__(
        self, schemas: SchemaSet, commands: Iterable[tuple[str, Handler]], *, negotiation: bool
    ) -> None:
        self.schemas = schemas
        self.negotiation = negotiation
        self._commands: dict[str, Command] = {}
        for name, handler in commands:
            if name not in schemas.commands:
                raise KeyError(f"command {name!r} has no schema file")
            self._commands[name] = Command(name, handler, schemas.commands[name])

    def names(self) -> list[str]:
        """Command names, in registration order."""
        return list(self._commands)

    def lookup(self, request: Request) -> Command:
        """The command *request* names, checked as QEMU checks it before running it.

        :raise QMPError: command not found, OOB not allowed, or bad arguments.
        """
        command = self._commands.get(request.command)
        if command is None:
            raise command_not_found(request.command)
        if request.oob and not command.schema.allow_oob:
            raise oob_not_supported(request.command)
        self.schemas.policy.check_command(command.schema.features, command.name)
        self.schemas.validate_arguments(command.name, request.arguments)
        return command

    def rewrite(self, error: QMPError) -> QMPError:
        """While negotiating, QEMU answers every CommandNotFound with one hint."""
        if self.negotiation and error.error_class is ErrorClass.COMMAND_NOT_FOUND:
            return CommandNotFoundError(NEGOTIATION_DESC)
        return error
