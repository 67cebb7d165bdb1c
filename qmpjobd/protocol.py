"""QMP protocol rules, sans I/O: the greeting, request envelope checks, and the
reply, error and event objects.

This is the one place that builds the ``{"class", "desc"}`` error object and
the event envelope. It works on decoded JSON values (dicts, lists, ...) and
produces the same; the ``wire`` layer turns them into bytes, except for
events: :func:`event_line` builds an event's encoded line directly, because
every event is encoded once for every monitor.

Must not import: jobs, block, sockets, asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import EMULATED_QEMU_VERSION, __version__, wire
from .errors import ErrorClass, QMPError
from .events import Event
from .wire.qdict import qdict_order, qemu_order


class _NoId:
    """The absence of an ``id`` member (distinct from ``"id": null``)."""

    _instance: _NoId | None = None

    def __new__(cls) -> _NoId:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_ID"


NO_ID: Final = _NoId()

#: Text CommandNotFound errors are rewritten to while negotiating.
NEGOTIATION_DESC: Final = "Expecting capabilities negotiation with 'qmp_capabilities'"
PACKAGE: Final = f"qmpjobd {__version__}"
OFFERED_CAPABILITIES: Final = ("oob",)


def version_info(qemu: tuple[int, int, int] = EMULATED_QEMU_VERSION) -> dict[str, Any]:
    """``query-version``'s result, also the greeting's ``version`` member."""
    major, minor, micro = qemu
    return {"qemu": {"micro": micro, "minor": minor, "major": major}, "package": PACKAGE}


def greeting(qemu: tuple[int, int, int] = EMULATED_QEMU_VERSION) -> dict[str, Any]:
    return {"QMP": {"version": version_info(qemu), "capabilities": list(OFFERED_CAPABILITIES)}}


@dataclass(frozen=True, slots=True)
class Request:
    """A request whose envelope passed the checks."""

    command: str
    arguments: dict[str, Any]
    id: Any
    oob: bool


_PLAIN_MEMBERS: Final = frozenset({"execute", "arguments", "id"})
_EMPTY: Final[dict[str, Any]] = {}


class RequestError(Exception):
    """An envelope error: the error to send and the id to echo (or NO_ID)."""

    def __init__(self, error: QMPError, req_id: Any) -> None:
        super().__init__(error.desc)
        self.error = error
        self.id = req_id


def check_request(obj: object, *, oob_enabled: bool) -> Request:
    """Check a decoded request's envelope the way QEMU 7.2 does.

    Members are examined in QEMU's QDict order, so when several are wrong
    the client is told about the same one QEMU would name.

    :raise RequestError: with QEMU's text and the id to echo.
    """
    if not isinstance(obj, dict):
        raise RequestError(QMPError("QMP input must be a JSON object"), NO_ID)
    # QEMU echoes the id re-serialised from its QDict: objects in hash order.
    req_id = obj.get("id", NO_ID)
    if isinstance(req_id, dict | list):
        req_id = qemu_order(req_id)
    # The common, well-formed request needs no member ordering at all.
    command = obj.get("execute")
    arguments = obj.get("arguments", _EMPTY)
    if type(command) is str and type(arguments) is dict and obj.keys() <= _PLAIN_MEMBERS:
        return Request(command, arguments if arguments is not _EMPTY else {}, req_id, False)
    return _check_in_qemu_order(obj, req_id, oob_enabled=oob_enabled)


def _check_in_qemu_order(obj: dict[str, Any], req_id: Any, *, oob_enabled: bool) -> Request:
    """The full check, member by member in QEMU's QDict order."""
    exec_key: str | None = None
    for name in qdict_order(obj):
        value = obj[name]
        if name == "execute" or (name == "exec-oob" and oob_enabled):
            if not isinstance(value, str):
                raise RequestError(QMPError(f"QMP input member '{name}' must be a string"), req_id)
            if exec_key is not None:
                raise RequestError(
                    QMPError(f"QMP input member '{name}' clashes with '{exec_key}'"), req_id
                )
            exec_key = name
        elif name == "arguments":
            if not isinstance(value, dict):
                raise RequestError(
                    QMPError("QMP input member 'arguments' must be an object"), req_id
                )
        elif name != "id":
            raise RequestError(QMPError(f"QMP input member '{name}' is unexpected"), req_id)
    if exec_key is None:
        raise RequestError(QMPError("QMP input lacks member 'execute'"), req_id)
    arguments = obj.get("arguments")
    return Request(
        command=obj[exec_key],
        arguments=arguments if arguments is not None else {},
        id=req_id,
        oob=exec_key == "exec-oob",
    )


def command_not_found(command: str) -> QMPError:
    return QMPError(f"The command {command} has not been found", ErrorClass.COMMAND_NOT_FOUND)


def oob_not_supported(command: str) -> QMPError:
    return QMPError(f"The command {command} does not support OOB")


def reply(result: Any, req_id: Any) -> dict[str, Any]:
    """A success reply; 7.2 puts ``return`` before ``id``."""
    if req_id is NO_ID:
        return {"return": result}
    return {"return": result, "id": req_id}


def error_reply(error: QMPError, req_id: Any = NO_ID) -> dict[str, Any]:
    """An error reply; 7.2 puts ``id`` before ``error``."""
    body = {"class": error.error_class.value, "desc": error.desc}
    if req_id is NO_ID:
        return {"error": body}
    return {"id": req_id, "error": body}


def event_message(event: Event) -> dict[str, Any]:
    seconds, micro = event.timestamp
    return {
        "timestamp": {"seconds": seconds, "microseconds": micro},
        "event": event.name,
        "data": _plain(event.data),
    }


def event_timestamp(message: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(seconds, microseconds)`` of a received event message, if it has them."""
    stamp = message.get("timestamp")
    if not isinstance(stamp, Mapping):
        return None
    return int(stamp.get("seconds", 0)), int(stamp.get("microseconds", 0))


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    return data if isinstance(data, dict) else dict(data)


_PLAIN_NAME: Final = re.compile(r"[A-Z0-9_]+")
_EVENT_LINE: Final = (
    b'{"timestamp": {"seconds": %d, "microseconds": %d}, "event": "%s", "data": %s}\r\n'
)


def event_line(event: Event) -> bytes:
    """``wire.encode(event_message(event))``, built faster.

    Only the data goes through the encoder: the envelope around it is ints
    and a plain ASCII name, which the encoder would print as they are.
    """
    name = event.name
    if _PLAIN_NAME.fullmatch(name) is None:
        return wire.encode(event_message(event))
    seconds, micro = event.timestamp
    body = wire.encode(_plain(event.data))
    return _EVENT_LINE % (seconds, micro, name.encode("ascii"), body[:-2])
