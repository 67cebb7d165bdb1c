"""blkdebug's rule engine: events, a state number, and the rules they arm.

The model (QEMU 7.2's ``blkdebug``):

* The node has a state, a positive integer starting at 1.
* Rules are attached to an event (a ``BlkdebugEvent`` name). A rule with
  ``state`` 0 (the default) matches in every state; otherwise only in that
  state.
* When an event fires, each matching ``inject-error`` rule of that event
  becomes *active*; the first such match in an event replaces the whole list
  of active rules. Each matching ``set-state`` rule sets the next state
  (the first rule in configuration order wins); the state changes after all
  rules of the event were looked at.
* Every request (read, write, write-zeroes, discard, flush, block-status)
  checks the active rules in configuration order: the first rule whose
  ``iotype`` includes the request (no ``iotype``: every type but
  block-status) and whose ``sector`` (``-1`` = any)
  lies inside the request decides. Its ``errno`` (default 5, EIO) fails the
  request; an ``errno`` of 0 or below lets it pass. A ``once`` rule is
  removed after it fired.
* ``immediately`` only decides whether the error is returned at once or
  after one trip through the event loop; it does not arm the rule.

A leaf: no imports of ours. The driver itself is in ``blkdebug.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: BlkdebugIOType values, in QAPI order.
IO_TYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
#: Without ``iotype`` a rule applies to every request but block-status.
_DEFAULT_IOTYPES = frozenset(IO_TYPES) - {"block-status"}
_U64 = 1 << 64


@dataclass(eq=False)
class InjectRule:
    event: str
    state: int
    iotypes: frozenset[str]
    errno: int
    offset: int | None  # byte offset of the sector, None for "any"
    once: bool
    immediately: bool


@dataclass(eq=False)
class SetStateRule:
    event: str
    state: int
    new_state: int


@dataclass
class Blkdebug:
    """The rules and state of one blkdebug node."""

    inject: list[InjectRule] = field(default_factory=list)
    set_state: list[SetStateRule] = field(default_factory=list)
    state: int = 1
    active: list[InjectRule] = field(default_factory=list)

    @classmethod
    def from_options(
        cls,
        inject_error: Sequence[Mapping[str, Any]],
        set_state: Sequence[Mapping[str, Any]],
    ) -> Blkdebug:
        engine = cls()
        for opts in inject_error:
            iotype = opts.get("iotype")
            sector = int(opts.get("sector", -1))
            engine.inject.append(
                InjectRule(
                    event=str(opts["event"]),
                    state=int(opts.get("state", 0)),
                    iotypes=_DEFAULT_IOTYPES if iotype is None else frozenset({str(iotype)}),
                    errno=int(opts.get("errno", 5)),
                    offset=None if sector == -1 else (sector * 512) % _U64,
                    once=bool(opts.get("once", False)),
                    immediately=bool(opts.get("immediately", False)),
                )
            )
        for opts in set_state:
            engine.set_state.append(
                SetStateRule(
                    event=str(opts["event"]),
                    state=int(opts.get("state", 0)),
                    new_state=int(opts["new_state"]),
                )
            )
        return engine

    def _matches(self, rule_state: int) -> bool:
        return rule_state == 0 or rule_state == self.state

    def fire(self, event: str) -> None:
        """An event happened on the node: arm rules and move the state."""
        armed = [r for r in self.inject if r.event == event and self._matches(r.state)]
        if armed:
            self.active = armed
        for rule in self.set_state:
            if rule.event == event and self._matches(rule.state):
                self.state = rule.new_state
                break

    def check(self, offset: int, length: int, iotype: str) -> tuple[int, bool]:
        """The errno a request must fail with (0 = none), and whether at once."""
        for rule in self.active:
            if iotype not in rule.iotypes:
                continue
            if rule.offset is not None and not (length and offset <= rule.offset < offset + length):
                continue
            if rule.errno <= 0:
                return 0, True
            if rule.once:
                self.active.remove(rule)
                self.inject.remove(rule)
            return rule.errno, rule.immediately
        return 0, True
