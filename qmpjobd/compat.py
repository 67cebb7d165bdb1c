"""QEMU's ``-compat`` policy: what the daemon does with deprecated and
unstable interfaces (``--compat``).

Input policies (``accept``, ``reject``, ``crash``) apply to a command, a
member or an enum value that carries the ``deprecated`` or ``unstable``
feature in the emulated release's schema: ``reject`` answers QEMU's error,
``crash`` aborts the daemon as QEMU does. Output policies (``accept``,
``hide``) decide whether such things show in what the daemon sends;
qmpjobd's only deprecated output is in ``query-qmp-schema``, which with
``deprecated-output=hide`` leaves out deprecated commands, events, members
and enum values, as QEMU's introspection does (``unstable-output=hide``
changes nothing there, as in qemu-system 7.2 and 10.0).

Must not import: anything of qmpjobd but errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from .errors import CommandNotFoundError, QMPError

InputPolicy = Literal["accept", "reject", "crash"]
OutputPolicy = Literal["accept", "hide"]

_INPUT: Final = ("accept", "reject", "crash")
_OUTPUT: Final = ("accept", "hide")
#: The option's members in QEMU's order (CompatPolicy), with their values.
_MEMBERS: Final = {
    "deprecated-input": _INPUT,
    "deprecated-output": _OUTPUT,
    "unstable-input": _INPUT,
    "unstable-output": _OUTPUT,
}
#: The features a policy applies to, as the error texts name them.
_KINDS: Final = {"deprecated": "Deprecated", "unstable": "Unstable"}


def _abort() -> NoReturn:
    os.abort()


@dataclass(frozen=True, slots=True)
class CompatPolicy:
    """One daemon's policy; the default accepts everything, as QEMU's does."""

    deprecated_input: InputPolicy = "accept"
    deprecated_output: OutputPolicy = "accept"
    unstable_input: InputPolicy = "accept"
    unstable_output: OutputPolicy = "accept"

    @classmethod
    def parse(cls, text: str) -> CompatPolicy:
        """``deprecated-input=reject,unstable-output=hide,...``.

        :raise ValueError: QEMU's text for a bad member or value.
        """
        values: dict[str, str] = {}
        for part in text.split(",") if text else ():
            key, _, value = part.partition("=")
            if key not in _MEMBERS:
                raise ValueError(f"Parameter '{key}' is unexpected")
            if value not in _MEMBERS[key]:
                raise ValueError(f"Parameter '{key}' does not accept value '{value}'")
            values[key.replace("-", "_")] = value
        return cls(**values)  # type: ignore[arg-type]

    def _input(self, feature: str) -> InputPolicy:
        return self.deprecated_input if feature == "deprecated" else self.unstable_input

    def hides(self, features: tuple[str, ...] | list[str]) -> bool:
        """Whether introspection leaves out what has these features: only
        deprecated things, and only with deprecated-output=hide (qemu-system
        7.2 and 10.0 show unstable ones whatever unstable-output says)."""
        return "deprecated" in features and self.deprecated_output == "hide"

    def _check(self, features: tuple[str, ...] | list[str], what: str, name: str) -> None:
        for feature, kind in _KINDS.items():
            if feature not in features:
                continue
            policy = self._input(feature)
            if policy == "crash":
                _abort()
            if policy == "reject":
                text = f"{kind} {what} {name} disabled by policy"
                if what == "command":
                    raise CommandNotFoundError(text)
                raise QMPError(text)

    def check_command(self, features: tuple[str, ...], name: str) -> None:
        """:raise QMPError: CommandNotFound "Deprecated command X disabled by policy"."""
        self._check(features, "command", name)

    def check_member(self, features: list[str], name: str) -> None:
        """:raise QMPError: "Unstable parameter X disabled by policy"."""
        self._check(features, "parameter", name)

    def check_value(self, features: list[str], value: str) -> None:
        """:raise QMPError: "Deprecated value X disabled by policy"."""
        self._check(features, "value", value)


ACCEPT_ALL: Final = CompatPolicy()
