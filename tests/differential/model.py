"""Scenario data model for the differential tests, and its JSON form.

A *scenario* is a small QMP conversation: a list of steps, each acting on one
numbered connection (connect, send raw bytes, close) and saying how to collect
the answer on one or more connections (read until N messages, until the reply
to an id, until some events were seen, until the connection is quiet, until
EOF).  The same data is stored in every golden transcript, so a transcript can
be replayed on its own.

Raw bytes are stored in JSON as strings decoded with UTF-8 and
``surrogateescape``: readable for ordinary text, and exact for any byte
(invalid UTF-8 becomes ``\\udcXX``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

JSON = Any

GROUP_PROTOCOL = "protocol"
GROUP_JOBS = "jobs"

Action = Literal["connect", "send", "close", "run"]


class _Unset:
    """Marker for "no reply id expected" (``None`` is a valid QMP id)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def bytes_to_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def text_to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class EventPattern:
    """An event named ``name`` whose ``data`` contains ``data`` (subset match)."""

    name: str
    data: Mapping[str, JSON] = field(default_factory=dict)

    def matches(self, message: Mapping[str, JSON]) -> bool:
        if message.get("event") != self.name:
            return False
        got = message.get("data", {})
        if not isinstance(got, dict):
            return False
        return all(k in got and strict_equal(got[k], v) for k, v in self.data.items())

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"event": self.name}
        if self.data:
            out["data"] = dict(self.data)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> EventPattern:
        return cls(obj["event"], dict(obj.get("data", {})))


@dataclass(frozen=True)
class Expect:
    """How to collect the answer on one connection.

    Collection goes on until every given condition holds (or ``timeout_s``
    passes), then until the connection has been quiet for ``quiet_ms``.
    """

    messages: int | None = None
    replies: int | None = None
    reply_id: JSON = UNSET
    events: tuple[EventPattern, ...] = ()
    quiet_ms: int = 0
    eof: bool = False
    timeout_s: float = 1.0

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {}
        if self.messages is not None:
            out["messages"] = self.messages
        if self.replies is not None:
            out["replies"] = self.replies
        if self.reply_id is not UNSET:
            out["reply_id"] = self.reply_id
        if self.events:
            out["events"] = [e.to_json() for e in self.events]
        if self.quiet_ms:
            out["quiet_ms"] = self.quiet_ms
        if self.eof:
            out["eof"] = True
        out["timeout_s"] = self.timeout_s
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Expect:
        return cls(
            messages=obj.get("messages"),
            replies=obj.get("replies"),
            reply_id=obj.get("reply_id", UNSET),
            events=tuple(EventPattern.from_json(e) for e in obj.get("events", ())),
            quiet_ms=int(obj.get("quiet_ms", 0)),
            eof=bool(obj.get("eof", False)),
            timeout_s=float(obj.get("timeout_s", 1.0)),
        )


@dataclass(frozen=True)
class Step:
    """One action on connection ``conn`` and what to collect afterwards.

    ``chunks`` are sent one after the other with ``gap_ms`` between them, so a
    request split across several sends reaches the server in pieces.
    ``shape`` names normalisations that apply only to this step's messages
    (``"commands"``: a ``return`` that is a list of ``{"name": str}``).
    """

    conn: int
    action: Action
    chunks: tuple[bytes, ...] = ()
    expect: Mapping[int, Expect] = field(default_factory=dict)
    gap_ms: int = 0
    shape: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"conn": self.conn, "action": self.action}
        if self.note:
            out["note"] = self.note
        if self.action == "send":
            out["send"] = [bytes_to_text(c) for c in self.chunks]
            if self.gap_ms:
                out["gap_ms"] = self.gap_ms
        if self.action == "run":
            out["run"] = [bytes_to_text(c) for c in self.chunks]
        if self.shape:
            out["shape"] = list(self.shape)
        out["expect"] = {str(k): v.to_json() for k, v in sorted(self.expect.items())}
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Step:
        return cls(
            conn=int(obj["conn"]),
            action=cast(Action, obj["action"]),
            chunks=tuple(text_to_bytes(c) for c in obj.get("send", obj.get("run", ()))),
            expect={int(k): Expect.from_json(v) for k, v in obj.get("expect", {}).items()},
            gap_ms=int(obj.get("gap_ms", 0)),
            shape=tuple(obj.get("shape", ())),
            note=str(obj.get("note", "")),
        )


@dataclass(frozen=True)
class Scenario:
    """A named QMP conversation over ``connections`` client connections.

    ``progress``: replace job progress numbers before comparing.
    ``same_events``: connections that must see exactly the same events.
    ``xfail_reason``: a known qmpjobd difference; replaying against qmpjobd is
    expected to fail (strictly) until it is fixed.  It describes qmpjobd, not
    the recording, so it is not part of the JSON form.  ``xfail_on``: the
    profiles the xfail applies to (empty: all).
    ``profiles``: the QEMU releases (``--qemu-version`` names) the scenario
    applies to (empty: all); a command one release lacks is such a case.
    Scenarios of group ``jobs`` are compared as two sequences per
    connection (events, replies), because QEMU may send a job's events
    before or after a command's reply.
    """

    name: str
    description: str
    steps: tuple[Step, ...]
    group: str = GROUP_PROTOCOL
    connections: int = 1
    progress: bool = False
    same_events: tuple[int, ...] = ()
    xfail_reason: str = ""
    xfail_on: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()

    def applies_to(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def xfails_on(self, profile: str) -> bool:
        return bool(self.xfail_reason) and (not self.xfail_on or profile in self.xfail_on)

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {
            "name": self.name,
            "description": self.description,
            "group": self.group,
            "connections": self.connections,
        }
        if self.progress:
            out["progress"] = True
        if self.same_events:
            out["same_events"] = list(self.same_events)
        if self.profiles:
            out["profiles"] = list(self.profiles)
        out["steps"] = [s.to_json() for s in self.steps]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, JSON]) -> Scenario:
        return cls(
            name=obj["name"],
            description=obj["description"],
            group=obj.get("group", GROUP_PROTOCOL),
            connections=int(obj.get("connections", 1)),
            progress=bool(obj.get("progress", False)),
            same_events=tuple(obj.get("same_events", ())),
            profiles=tuple(obj.get("profiles", ())),
            steps=tuple(Step.from_json(s) for s in obj["steps"]),
        )


def strict_equal(a: JSON, b: JSON) -> bool:
    """JSON equality that keeps ``false`` apart from ``0`` and ``1`` from ``1.0``.

    Object member order does not matter; array order does.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def is_reply(message: Mapping[str, JSON]) -> bool:
    return "return" in message or "error" in message


def is_event(message: Mapping[str, JSON]) -> bool:
    return "event" in message
