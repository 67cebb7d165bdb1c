"""The streaming QMP input decoder: bytes in, JSON values and parse errors out.

Input is framed by JSON value boundaries, never by newlines: ``qemu.qmp``
sends no newline, socat sends ``\\n``, libvirt ``\\r\\n``, and two objects on
one line are two messages. What comes out is exactly what QEMU 7.2 would
have read from the same bytes, in the same order, at the same moment (a
top-level number, for instance, is complete only once a following byte
arrives); see :mod:`qmpjobd.wire.qemu_json` for the rules.

Two routes give the same results:

* the **fast route** hands well-formed messages that start with ``{`` to the
  standard library's C JSON scanner, and takes a result only when nothing in
  the message could make QEMU read it differently (duplicate keys, numbers
  such as ``0e5``, escapes of surrogates or noncharacters, raw noncharacters,
  deep nesting, huge messages);
* anything else — other top-level values, errors, single quotes, control
  bytes, a message cut off at the end of a chunk — goes through
  :class:`~qmpjobd.wire.qemu_json.QemuJsonReader`, QEMU's reader modelled
  byte by byte, until it is back between messages.

Part of :mod:`qmpjobd.wire`: no asyncio, no sockets, nothing of jobs or QMP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from qmpjobd.wire._utf8 import NONCHARACTER_RE
from qmpjobd.wire.qemu_json import (
    MAX_NESTING,
    ParseError,
    QemuJsonReader,
    json_float,
    json_integer,
)

__all__ = ["Decoder", "ParseError"]

# Messages longer than this go the exact route, so that the fast route never
# has to think about the token count and token size limits (a message of
# fewer bytes than MAX_TOKEN_COUNT has fewer tokens than that).
_FAST_MAX_CHARS: Final = 1 << 20

# The fast route decodes at most this much input at a time.
_WINDOW: Final = 1 << 16
# Input that may start a message the fast route reads.
_FAST_FIRST_BYTES: Final = frozenset(b"{ \t\r\n")

# A message this short cannot nest deeper than MAX_NESTING (each level takes
# an opening and a closing character).
_NESTING_CHECK_CHARS: Final = 2 * MAX_NESTING

_WS_RE: Final = re.compile(r"[ \t\r\n]*")
# Text that the C scanner may read differently from QEMU, in any message that
# contains it: escapes of surrogates and noncharacters; an exponent right
# after a bare 0 (QEMU reads "0e5" as 0 followed by a word).
_SUSPECT_ASCII_RE: Final = re.compile(
    r"\\u(?:[dD][89a-fA-F]|[fF][dD][dDeE]|[fF][fF][fF][eEfF])|(?<![0-9.])0[eE]"
)
_SUSPECT_RE: Final = re.compile(_SUSPECT_ASCII_RE.pattern + "|" + NONCHARACTER_RE.pattern)
# 19 digits in a row: an integer that may be beyond int64, which needs QEMU's
# integer rules rather than Python's plain int().
_LONG_DIGITS_RE: Final = re.compile(r"[0-9]{19}")


class _Rejected(ValueError):
    """The fast route saw something QEMU would read differently."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Rejected("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise _Rejected(name)


def _scanner(parse_int: Callable[[str], Any] | None) -> Callable[[str, int], tuple[Any, int]]:
    decoder = json.JSONDecoder(
        object_pairs_hook=_object_pairs,
        parse_constant=_no_constant,
        parse_float=json_float,
        parse_int=parse_int,
        strict=True,
    )
    scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    return scan


_SCAN_PLAIN: Final = _scanner(None)
_SCAN_BIG_INTS: Final = _scanner(json_integer)


class Decoder:
    """Streaming decoder for one QMP connection's input.

    Feed it the bytes as they arrive; it returns, in input order, each
    complete top-level JSON value (dict, list, str, int, float, bool, None)
    and a :class:`ParseError` for each error QEMU would report. Incomplete
    input is kept for the next :meth:`feed`.
    """

    __slots__ = ("_exact", "_exact_active")

    def __init__(self) -> None:
        self._exact = QemuJsonReader()
        # True while the exact reader holds a partly read message.
        self._exact_active = False

    def feed(self, data: bytes) -> list[object]:
        """Read ``data``; return the values and errors it completes, in order."""
        out: list[object] = []
        pos = 0
        n = len(data)
        while pos < n:
            if self._exact_active:
                pos = self._exact.feed(data, out, pos, stop_when_idle=True)
                self._exact_active = not self._exact.idle
            else:
                pos = self._feed_fast(data, pos, out)
        return out

    def feed_eof(self) -> list[object]:
        """The input has ended: report what QEMU reports, and start afresh.

        QEMU reports nothing for a message left unfinished when the client
        goes away (it re-creates its parser on the next connection), so this
        always returns an empty list.
        """
        self._exact.reset()
        self._exact_active = False
        return []

    def _feed_fast(self, data: bytes, pos: int, out: list[object]) -> int:
        """Read whole ``{...}`` messages from ``data[pos:]`` with the C scanner.

        The input is taken in windows, so that handing over to the exact
        reader (which may happen once per message) never costs more than one
        window. Returns the position reached; when that is short of the end,
        the exact reader takes over from there.
        """
        n = len(data)
        while pos < n:
            if data[pos] not in _FAST_FIRST_BYTES:
                break
            window_end = min(n, pos + _WINDOW)
            read = self._scan_window(data[pos:window_end], out)
            if read == window_end - pos:
                pos = window_end
            elif read > 0 and window_end < n:
                # The window may have cut the next message short: start a
                # new window with it.
                pos += read
            else:
                pos += read
                break
        if pos < n:
            self._exact_active = True
        return pos

    def _scan_window(self, chunk: bytes, out: list[object]) -> int:
        """Read whole ``{...}`` messages from ``chunk``; return the bytes read."""
        ascii_only = chunk.isascii()
        if ascii_only:
            text = chunk.decode("ascii")
            suspect_re = _SUSPECT_ASCII_RE
        else:
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = chunk[: exc.start].decode("utf-8")
            suspect_re = _SUSPECT_RE
        end_of_text = len(text)
        # Where the next suspect text and the next long digit run are; looked
        # for only once a message has been scanned (-1: not yet looked for).
        suspect_at = -1
        digits_at = -1
        ws_match = _WS_RE.match
        scan = _SCAN_PLAIN
        i = 0
        while i < end_of_text:
            c = text[i]
            if c != "{":
                if c in " \t\r\n":
                    ws = ws_match(text, i)
                    assert ws is not None  # the pattern matches the empty string
                    i = ws.end()
                    continue
                break
            try:
                value, end = scan(text, i)
            except (StopIteration, ValueError, RecursionError):
                break
            if end - i > _NESTING_CHECK_CHARS and (
                end - i > _FAST_MAX_CHARS
                or text.count("{", i, end) + text.count("[", i, end) > MAX_NESTING
            ):
                break
            if suspect_at < i:
                found = suspect_re.search(text, i)
                suspect_at = found.start() if found is not None else end_of_text
            if suspect_at < end:
                break
            if digits_at < i:
                found = _LONG_DIGITS_RE.search(text, i)
                digits_at = found.start() if found is not None else end_of_text
            if digits_at < end:
                # An integer that may be beyond int64: read this message again
                # with QEMU's integer rules.
                value, end = _SCAN_BIG_INTS(text, i)
            out.append(value)
            i = end
        if ascii_only:
            return i
        return len(text[:i].encode("utf-8"))
