"""The QMP output encoder: one object in, one line of QEMU-style JSON out.

QEMU 7.2's JSON writer prints compact JSON with ``", "`` and ``": "``
separators, ASCII only: every character outside printable ASCII (and DEL) is
written ``\\uXXXX`` with uppercase hex, astral characters as surrogate pairs,
with ``\\b \\f \\n \\r \\t`` as the short escapes and ``/`` left alone.
Characters QEMU cannot hold (noncharacters, lone surrogates) come out as
``\\uFFFD``. Floats are printed like C's ``%.17g`` (``0.1`` becomes
``0.10000000000000001``, ``1e5`` becomes ``100000``, ``-0.0`` becomes
``-0``); a number beyond a double's range as the client wrote it (QEMU
writes ``inf``, which is not JSON); integers as they are. Dict member
order is kept. Each message ends with ``\\r\\n``.

Part of :mod:`qmpjobd.wire`: no asyncio, no sockets, nothing of jobs or QMP.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

from qmpjobd.wire._utf8 import is_valid_codepoint
from qmpjobd.wire.qemu_json import NumberToken

__all__ = ["encode", "encode_reference"]


def _unencodable(obj: object) -> Any:
    raise TypeError(f"cannot encode {type(obj).__name__} as QMP JSON")


_C_ENCODER: Final[Callable[[object, int], list[str]]] = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None,  # no circular-reference check: QMP objects are trees
    _unencodable,
    json.encoder.encode_basestring_ascii,
    None,
    ": ",
    ", ",
    False,
    False,
    True,
)

# What the C encoder writes that QEMU writes differently: \u escapes (case,
# and characters QEMU replaces), and floats (repr instead of %.17g). Escaped
# backslashes are matched so that a literal "\\u0041" is left alone; strings
# are matched so that number-like text inside them is left alone.
_ESCAPE_RE: Final = re.compile(
    r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\u([0-9a-f]{4})"
)
_FLOATISH_RE: Final = re.compile(r"[0-9][.eE]|Infinity|NaN")
_NUMBER_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN|-?[0-9][0-9.eE+-]*')


_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


def _fix_escape(m: re.Match[str]) -> str:
    single = m.group(3)
    if single is not None:
        cp = int(single, 16)
    elif m.group(1) is not None:
        cp = 0x10000 + ((int(m.group(1), 16) & 0x3FF) << 10 | (int(m.group(2), 16) & 0x3FF))
    else:
        return m.group(0)
    if not is_valid_codepoint(cp):
        return "\\uFFFD"
    return m.group(0).upper().replace("\\U", "\\u")


def format_float(value: float) -> str:
    """A double as QEMU prints it (``%.17g``)."""
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.17g}"


def _fix_number(m: re.Match[str]) -> str:
    text = m.group(0)
    if text[0] == '"' or not ("." in text or "e" in text or "E" in text or text[-1] == "y"):
        return text
    return format_float(float(text))


def encode(obj: object) -> bytes:
    """Serialize one QMP message as QEMU does, ending in ``b"\\r\\n"``.

    ``obj`` is built from dict (str keys), list/tuple, str, int, float, bool
    and None.

    :raise TypeError: for anything else.
    """
    try:
        text = "".join(_C_ENCODER(obj, 0))
    except RecursionError:
        return encode_reference(obj)
    if "\\u" in text:
        text = _ESCAPE_RE.sub(_fix_escape, text)
    # A float from the C encoder (repr) holds "." or "e+"/"e-", or is
    # Infinity/NaN: substring tests rule most messages out faster than a
    # regex. Digits inside strings ("qmpjobd 0.1.0") are no floats: look
    # again without them.
    if (
        ("." in text or "e+" in text or "e-" in text or "Infinity" in text or "NaN" in text)
        and _FLOATISH_RE.search(text)
        and _FLOATISH_RE.search(_STRING_RE.sub("", text))
    ):
        if "NaN" in text or "Infinity" in text:
            # The C encoder drops a NaN's sign, which C's printf shows, and
            # prints a number out of a double's range as Infinity: the
            # reference writes the client's own token back.
            return encode_reference(obj)
        text = _NUMBER_RE.sub(_fix_number, text)
    return text.encode("ascii") + b"\r\n"


# --- a plain, slow model of QEMU's writer, for tests to compare against -----

_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _quote_reference(s: str) -> str:
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif not is_valid_codepoint(cp):
            out.append("\\uFFFD")
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        elif cp < 0x20 or cp >= 0x7F:
            out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class _Literal:
    """Text to copy to the output, on the encoder's work stack."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_CLOSE_DICT: Final = _Literal("}")
_CLOSE_LIST: Final = _Literal("]")
_COMMA: Final = _Literal(", ")


def _reference(obj: object) -> str:
    # Iterative: QEMU accepts (and echoes) values nested 1024 deep.
    out: list[str] = []
    stack: list[object] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif item is None:
            out.append("null")
        elif item is True:
            out.append("true")
        elif item is False:
            out.append("false")
        elif isinstance(item, str):
            out.append(_quote_reference(item))
        elif isinstance(item, int):
            out.append(str(int(item)))
        elif isinstance(item, float):
            out.append(item.token if type(item) is NumberToken else format_float(item))
        elif isinstance(item, dict):
            out.append("{")
            stack.append(_CLOSE_DICT)
            for n, (key, value) in enumerate(reversed(list(item.items()))):
                if n:
                    stack.append(_COMMA)
                stack.append(value)
                stack.append(_Literal(_quote_reference(key) + ": "))
        elif isinstance(item, list | tuple):
            out.append("[")
            stack.append(_CLOSE_LIST)
            for n, value in enumerate(reversed(item)):
                if n:
                    stack.append(_COMMA)
                stack.append(value)
        else:
            raise TypeError(f"cannot encode {type(item).__name__} as QMP JSON")
    return "".join(out)


def encode_reference(obj: object) -> bytes:
    """Like :func:`encode`, written the plain way (slow); for tests."""
    return _reference(obj).encode("ascii") + b"\r\n"
