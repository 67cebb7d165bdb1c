"""QEMU's "modified UTF-8" rules, as its JSON parser and writer apply them.

QEMU keeps strings as NUL-terminated C strings in modified UTF-8: UTF-8 in
which U+0000 is spelled ``C0 80``. Its decoder refuses everything strict
UTF-8 refuses (overlong forms, surrogates, code points past U+10FFFF), and in
addition Unicode's 66 noncharacters; it accepts ``C0 80`` as U+0000.

Part of :mod:`qmpjobd.wire`; imports nothing of ours.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# Smallest code point that may be spelled with a sequence of length 2..6.
_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)

#: Matches a noncharacter in a decoded Python string.
NONCHARACTER_RE = re.compile(
    "[\ufdd0-\ufdef\ufffe\uffff"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(1, 17))
    + "]"
)


def is_valid_codepoint(cp: int) -> bool:
    """Whether QEMU accepts ``cp`` as a character (its ``is_valid_codepoint``)."""
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return not 0xD800 <= cp <= 0xDFFF


def codepoint_at(data: bytes, pos: int) -> tuple[int, int]:
    """Decode one modified-UTF-8 sequence of ``data`` at ``pos``.

    Returns ``(codepoint, end)``; ``codepoint`` is -1 for an invalid sequence,
    and ``end`` is where QEMU resumes (past the bytes it looked at). The end of
    ``data`` behaves like a terminating NUL.
    """
    n = len(data)
    if pos >= n or data[pos] == 0:
        return -1, pos
    byte = data[pos]
    p = pos + 1
    if byte < 0x80:
        return byte, p
    if byte >= 0xFE or not byte & 0x40:
        return -1, p
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = data[p] if p < n else 0
        if nxt & 0xC0 != 0x80:
            return -1, p
        p += 1
        cp = cp << 6 | (nxt & 0x3F)
    if not is_valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, p
    return cp, p


def decode_segment(data: bytes) -> str | None:
    """Decode raw string bytes the way QEMU's parser does, or None if invalid."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not NONCHARACTER_RE.search(text):
            return text
    out: list[str] = []
    pos = 0
    n = len(data)
    while pos < n:
        cp, pos = codepoint_at(data, pos)
        if cp < 0:
            return None
        out.append(chr(cp))
    return "".join(out)


def c_string_to_text(data: bytes) -> str:
    """The text a client reads when QEMU's JSON writer prints C string ``data``.

    The string ends at the first NUL byte; each invalid sequence becomes one
    U+FFFD, ``C0 80`` becomes U+0000.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    if data.isascii():
        return data.decode("ascii")
    out: list[str] = []
    pos = 0
    n = len(data)
    while pos < n:
        cp, pos = codepoint_at(data, pos)
        out.append(REPLACEMENT if cp < 0 else chr(cp))
    return "".join(out)
