"""The one exception root of qmpjobd, and domain errors with their QMP class.

A leaf module: it imports nothing of ours.

Tree::

    QmpJobdError
     +-- QMPError            an error a client is told about: class + exact text
     |    +-- CommandNotFoundError
     +-- ConfigError         bad start-up configuration

Only :class:`QMPError` and its subclasses become ``{"error": ...}`` replies
(``protocol`` builds the wire object). Anything else raised inside a command
handler is a bug: the session logs it and answers a plain ``GenericError``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    """QEMU's QapiErrorClass, spelled as on the wire."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    KVM_MISSING_CAP = "KVMMissingCap"


class QmpJobdError(Exception):
    """Root of every exception qmpjobd raises on purpose."""


class QMPError(QmpJobdError):
    """A failure the client is told about, with its QMP error class and text.

    :param desc: the exact human-readable text (QEMU's wording).
    :param error_class: the QMP error class.
    """

    def __init__(self, desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.desc!r}, {self.error_class.value!r})"


class CommandNotFoundError(QMPError):
    """``CommandNotFound`` with the given text."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc, ErrorClass.COMMAND_NOT_FOUND)


class ConfigError(QmpJobdError):
    """The daemon cannot start with the configuration it was given."""
