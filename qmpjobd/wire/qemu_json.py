"""An exact model of QEMU 7.2's streaming JSON reader (lexer, streamer, parser).

QEMU reads QMP input in three stages, and a client can observe each of them:

* the **lexer** is a byte-level state machine. A byte it cannot use ends the
  current token as an error ("stray"), and it then skips input until a
  structural character, a control character or a 0xFE/0xFF byte. Numbers and
  bare words end only when the next byte arrives (lookahead), so a top-level
  ``3`` is answered only once something follows it. A single token longer
  than 64 MiB is cut off.
* the **streamer** collects tokens and counts braces and brackets. When both
  counts are back to zero, or one goes negative, it hands the collected tokens
  to the parser. It enforces the limits (token bytes, token count, nesting
  depth); a limit error drops the collected tokens, and what follows is read
  as new input. It does not skip to the end of a broken value, which is why
  one malformed line can produce several errors.
* the **parser** builds the value from one token list, or reports the first
  error it meets. Strings accept single quotes and ``\\'``; ``\\u0000`` is
  allowed; surrogates must pair up; noncharacters are refused.

:class:`QemuJsonReader` reproduces all three, byte for byte and error text for
error text. It is the reference behaviour for :class:`qmpjobd.wire.Decoder`,
which takes a faster route for plain, well-formed input and falls back to this
model for anything else.

Part of :mod:`qmpjobd.wire`: no I/O, no asyncio, nothing of jobs or QMP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from qmpjobd.wire._utf8 import c_string_to_text, decode_segment, is_valid_codepoint

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "MAX_TOKEN_SIZE",
    "ParseError",
    "QemuJsonReader",
    "json_integer",
]

#: The streamer's limits (json-streamer.c) and the lexer's token cut-off.
MAX_TOKEN_SIZE: Final = 64 << 20
MAX_TOKEN_COUNT: Final = 2 << 20
MAX_NESTING: Final = 1 << 10

#: Integers in this range stay integers; others become doubles.
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 64) - 1

# The parser formats its messages into a 1024-byte buffer.
_MESSAGE_MAX: Final = 1023


@dataclass(frozen=True, slots=True)
class ParseError:
    """One error QEMU's JSON reader reports: GenericError, without an id.

    :ivar desc: the full text, as the client reads it, e.g.
        ``"JSON parse error, expecting value"``.
    """

    desc: str


# --- the lexer -------------------------------------------------------------

# Token types. ERROR is the lexer's "stray" token; CUT is a token the lexer
# abandoned for being too long (QEMU passes its state number, which the
# streamer then rejects as too big).
ERROR: Final = 0
LCURLY: Final = 100
RCURLY: Final = 101
LSQUARE: Final = 102
RSQUARE: Final = 103
COLON: Final = 104
COMMA: Final = 105
INTEGER: Final = 106
FLOAT: Final = 107
KEYWORD: Final = 108
STRING: Final = 109
CUT: Final = 110
_TOKEN_TYPES: Final = frozenset(range(LCURLY, STRING + 1))

# Lexer states.
RECOVERY: Final = 1
DQ_ESCAPE: Final = 2
DQ_STRING: Final = 3
SQ_ESCAPE: Final = 4
SQ_STRING: Final = 5
ZERO: Final = 6
EXP_DIGITS: Final = 7
EXP_SIGN: Final = 8
EXP_E: Final = 9
MANTISSA: Final = 10
MANTISSA_DIGITS: Final = 11
DIGITS: Final = 12
SIGN: Final = 13
KEYWORD_CHARS: Final = 14
START: Final = 15

# A transition with this bit set does not consume the byte: the byte is looked
# at again in the new state.
_LOOKAHEAD: Final = 0x1000


def _build_table() -> tuple[tuple[int, ...], ...]:
    table = [[ERROR] * 256 for _ in range(START + 1)]

    def put(state: int, chars: str | range, target: int) -> None:
        for c in chars:
            table[state][c if isinstance(c, int) else ord(c)] = target

    def terminal(state: int, token: int) -> None:
        table[state] = [token | _LOOKAHEAD] * 256

    # Recovery: skip until a structural character, a control character other
    # than TAB, or one of the impossible bytes 0xFE 0xFF.
    put(RECOVERY, range(0x00, 0x20), START | _LOOKAHEAD)
    put(RECOVERY, range(0x20, 0xFE), RECOVERY)
    put(RECOVERY, range(0xFE, 0x100), START | _LOOKAHEAD)
    put(RECOVERY, "\t", RECOVERY)
    put(RECOVERY, "[]{}:,", START | _LOOKAHEAD)

    for escape, body, quote in ((DQ_ESCAPE, DQ_STRING, '"'), (SQ_ESCAPE, SQ_STRING, "'")):
        put(escape, range(0x20, 0xFE), body)
        put(body, range(0x20, 0xFE), body)
        put(body, "\\", escape)
        put(body, quote, STRING)

    terminal(ZERO, INTEGER)
    put(ZERO, "0123456789", ERROR)
    put(ZERO, ".", MANTISSA)

    terminal(EXP_DIGITS, FLOAT)
    put(EXP_DIGITS, "0123456789", EXP_DIGITS)
    put(EXP_SIGN, "0123456789", EXP_DIGITS)
    put(EXP_E, "-+", EXP_SIGN)
    put(EXP_E, "0123456789", EXP_DIGITS)

    terminal(MANTISSA_DIGITS, FLOAT)
    put(MANTISSA_DIGITS, "0123456789", MANTISSA_DIGITS)
    put(MANTISSA_DIGITS, "eE", EXP_E)
    put(MANTISSA, "0123456789", MANTISSA_DIGITS)

    terminal(DIGITS, INTEGER)
    put(DIGITS, "0123456789", DIGITS)
    put(DIGITS, "eE", EXP_E)
    put(DIGITS, ".", MANTISSA)
    put(SIGN, "0", ZERO)
    put(SIGN, "123456789", DIGITS)

    terminal(KEYWORD_CHARS, KEYWORD)
    put(KEYWORD_CHARS, range(ord("a"), ord("z") + 1), KEYWORD_CHARS)

    put(START, '"', DQ_STRING)
    put(START, "'", SQ_STRING)
    put(START, "0", ZERO)
    put(START, "123456789", DIGITS)
    put(START, "-", SIGN)
    put(START, "{", LCURLY)
    put(START, "}", RCURLY)
    put(START, "[", LSQUARE)
    put(START, "]", RSQUARE)
    put(START, ",", COMMA)
    put(START, ":", COLON)
    put(START, range(ord("a"), ord("z") + 1), KEYWORD_CHARS)
    put(START, " \t\r\n", START)
    return tuple(tuple(row) for row in table)


_TABLE: Final = _build_table()


def _self_loop_runs() -> dict[int, re.Pattern[bytes]]:
    """For each state, a pattern matching a run of bytes that keep it there.

    Consuming such a run in one step is the same as feeding it byte by byte.
    """
    runs: dict[int, re.Pattern[bytes]] = {}
    for state in (
        RECOVERY,
        DQ_STRING,
        SQ_STRING,
        DIGITS,
        MANTISSA_DIGITS,
        EXP_DIGITS,
        KEYWORD_CHARS,
    ):
        members = bytes(b for b in range(256) if _TABLE[state][b] == state)
        runs[state] = re.compile(b"[" + b"".join(b"\\x%02x" % b for b in members) + b"]+")
    return runs


_RUNS: Final = _self_loop_runs()

# Whole tokens that the lexer, started in START, would produce from the same
# bytes. Numbers and bare words need the byte after them to be present, and
# one that cannot continue them (QEMU ends them on lookahead).
_START_TOKEN_RE: Final = re.compile(
    rb"(?P<ws>[ \t\r\n]+)"
    rb"|(?P<punct>[{}\[\],:])"
    rb'|(?P<dq>"(?:[\x20\x21\x23-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+")'
    rb"|(?P<sq>'(?:[\x20-\x26\x28-\x5b\x5d-\xfd]++|\\[\x20-\xfd])*+')"
    rb"|(?P<int>-?(?:0|[1-9][0-9]*+))(?=[ \t\r\n,:\[\]{}])"
    rb"|(?P<float>-?(?:(?:0|[1-9][0-9]*+)\.[0-9]++(?:[eE][-+]?[0-9]++)?"
    rb"|[1-9][0-9]*+[eE][-+]?[0-9]++))(?=[ \t\r\n,:\[\]{}])"
    rb"|(?P<kw>[a-z]++)(?=[^a-z])"
)
_PUNCT_TYPES: Final = {
    ord("{"): LCURLY,
    ord("}"): RCURLY,
    ord("["): LSQUARE,
    ord("]"): RSQUARE,
    ord(":"): COLON,
    ord(","): COMMA,
}
# Token kind for each group of _START_TOKEN_RE, by group number.
_WS: Final = -1
_PUNCT: Final = -2
_GROUP_KINDS: Final = (ERROR, _WS, _PUNCT, STRING, STRING, INTEGER, FLOAT, KEYWORD)


# --- the parser ------------------------------------------------------------


class _Fail(Exception):
    """The parser's first error; QEMU keeps only the first one."""

    def __init__(self, message: bytes) -> None:
        super().__init__(message)
        self.message = message


class NumberToken(float):
    """A number beyond a double's range: its value is an infinity, and it
    keeps the client's token, so that echoing it (in an ``id``) writes the
    same bytes instead of ``inf``, which is not JSON."""

    token: str

    def __new__(cls, token: str) -> NumberToken:
        number = super().__new__(cls, token)
        number.token = token
        return number


def json_float(text: str) -> float:
    """Convert a number token to a double; one out of range keeps its token."""
    value = float(text)
    if value - value != 0.0:  # an infinity (a token is never NaN)
        return NumberToken(text)
    return value


def json_integer(text: str) -> int | float:
    """Convert an integer token: int64, else uint64, else a double."""
    if len(text) <= 18:
        return int(text)
    if len(text) <= 21:
        value = int(text)
        if INT_MIN <= value <= INT_MAX:
            return value
    return json_float(text)


_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES: Final = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}


def _hex4(data: bytes, pos: int) -> int:
    """QEMU's cvt4hex: four hex digits at ``pos``, or -1."""
    chunk = data[pos : pos + 4]
    if len(chunk) < 4 or not all(c in _HEX for c in chunk):
        return -1
    return int(chunk, 16)


def _parse_string(token: bytes) -> str:
    """Decode a string token (quotes included), like QEMU's parse_string()."""
    body = token[1:-1]
    if b"\\" not in body:
        if body.isascii():
            return body.decode("ascii")
        text = decode_segment(body)
        if text is None:
            raise _Fail(b"invalid UTF-8 sequence in string")
        return text
    out: list[str] = []
    # Positions are in ``token``: QEMU may read past the closing quote when an
    # escape is cut short, and its messages show what it read.
    pos = 1
    end = len(token) - 1
    while pos < end:
        slash = token.find(b"\\", pos, end)
        if slash < 0:
            slash = end
        if slash > pos:
            text = decode_segment(token[pos:slash])
            if text is None:
                raise _Fail(b"invalid UTF-8 sequence in string")
            out.append(text)
        if slash == end:
            break
        kind = token[slash + 1]
        if kind != ord("u"):
            simple = _SIMPLE_ESCAPES.get(kind)
            if simple is None:
                raise _Fail(b"invalid escape sequence in string")
            out.append(simple)
            pos = slash + 2
            continue
        cp = _hex4(token, slash + 2)
        pos = slash + 6
        if 0xD800 <= cp <= 0xDBFF and token[pos : pos + 2] == b"\\u":
            trailing = _hex4(token, pos + 2)
            if 0xDC00 <= trailing <= 0xDFFF:
                cp = 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF)
                pos += 6
            else:
                cp = -1
        if not is_valid_codepoint(cp):
            shown = token[slash:pos].split(b"\0", 1)[0]
            raise _Fail(shown + b" is not a valid Unicode character")
        out.append(chr(cp))
    return "".join(out)


def _parse_scalar(kind: int, token: bytes) -> object:
    if kind == STRING:
        return _parse_string(token)
    if kind == INTEGER:
        return json_integer(token.decode("ascii"))
    if kind == FLOAT:
        return json_float(token.decode("ascii"))
    if token == b"true":
        return True
    if token == b"false":
        return False
    if token == b"null":
        return None
    raise _Fail(b"invalid keyword '" + token + b"'")


class _Frame:
    __slots__ = ("container", "key", "want_key")

    def __init__(self, container: dict[str, object] | list[object]) -> None:
        self.container = container
        self.key: str | None = None
        self.want_key = True


def _parse_tokens(tokens: list[tuple[int, bytes]]) -> object:
    """QEMU's json_parser_parse() over one token list, without recursion."""
    n = len(tokens)
    i = 0
    stack: list[_Frame] = []
    while True:
        # Parse one value starting at tokens[i].
        if i >= n:
            raise _Fail(b"premature EOI")
        kind, text = tokens[i]
        i += 1
        value: object
        if kind in (LCURLY, LSQUARE):
            if i >= n:
                raise _Fail(b"premature EOI")
            closer = RCURLY if kind == LCURLY else RSQUARE
            if tokens[i][0] != closer:
                stack.append(_Frame({} if kind == LCURLY else []))
                continue
            i += 1
            value = {} if kind == LCURLY else []
        elif kind == INTEGER and len(text) <= 18:
            value = int(text)
        elif kind in (STRING, INTEGER, FLOAT, KEYWORD):
            value = _parse_scalar(kind, text)
        else:
            raise _Fail(b"expecting value")
        # Hand the value to the enclosing containers, closing those that end.
        while True:
            if not stack:
                return value
            frame = stack[-1]
            container = frame.container
            if isinstance(container, list):
                container.append(value)
                if i >= n:
                    raise _Fail(b"premature EOI")
                kind = tokens[i][0]
                i += 1
                if kind == COMMA:
                    break
                if kind != RSQUARE:
                    raise _Fail(b"expected separator in list")
                value = stack.pop().container
                continue
            if frame.want_key:
                if not isinstance(value, str):
                    raise _Fail(b"key is not a string in object")
                frame.key = value
                if i >= n:
                    raise _Fail(b"premature EOI")
                kind = tokens[i][0]
                i += 1
                if kind != COLON:
                    raise _Fail(b"missing : in object pair")
                frame.want_key = False
                break
            key = frame.key
            assert key is not None
            if key in container:
                raise _Fail(b"duplicate key")
            container[key] = value
            if i >= n:
                raise _Fail(b"premature EOI")
            kind = tokens[i][0]
            i += 1
            if kind == COMMA:
                frame.want_key = True
                break
            if kind != RCURLY:
                raise _Fail(b"expected separator in dict")
            value = stack.pop().container


def _parse(tokens: list[tuple[int, bytes]]) -> object:
    try:
        return _parse_tokens(tokens)
    except _Fail as fail:
        message = fail.message[:_MESSAGE_MAX]
        return ParseError("JSON parse error, " + c_string_to_text(message))


# --- lexer + streamer ------------------------------------------------------


class QemuJsonReader:
    """QEMU's JSON message reader, fed bytes, producing values and errors.

    Results go to the list passed to :meth:`feed`, in order. Each is a decoded
    value (dict, list, str, int, float, bool, None) or a :class:`ParseError`.
    """

    __slots__ = ("_brace", "_bracket", "_state", "_token", "_token_size", "_tokens")

    def __init__(self) -> None:
        self._state = START
        self._token = bytearray()
        self._tokens: list[tuple[int, bytes]] = []
        self._brace = 0
        self._bracket = 0
        self._token_size = 0

    @property
    def idle(self) -> bool:
        """True between messages: nothing half-read, nothing collected."""
        return self._state == START and not self._tokens and not self._token

    def feed(
        self, data: bytes, out: list[object], pos: int = 0, stop_when_idle: bool = False
    ) -> int:
        """Read ``data[pos:]``, appending results to ``out``.

        With ``stop_when_idle``, stop as soon as the reader is idle again after
        having read at least one byte. Returns the position reached.
        """
        n = len(data)
        table = _TABLE
        runs = _RUNS
        token = self._token
        begin = pos
        while pos < n:
            if (
                stop_when_idle
                and pos > begin
                and self._state == START
                and not token
                and not self._tokens
            ):
                return pos
            state = self._state
            if state == START:
                new_pos = self._read_tokens(data, pos, out, stop_when_idle)
                if new_pos != pos:
                    pos = new_pos
                    continue
                if stop_when_idle and pos > begin and not self._tokens:
                    return pos
            else:
                run = runs.get(state)
                if run is not None:
                    limit = min(n, pos + MAX_TOKEN_SIZE + 1 - len(token))
                    m = run.match(data, pos, limit)
                    if m is not None:
                        end = m.end()
                        if state != RECOVERY:
                            token += data[pos:end]
                        pos = end
                        self._check_token_length(out)
                        continue
            # One byte through the state machine (json_lexer_feed_char).
            byte = data[pos]
            pos += 1
            consumed = False
            while not consumed:
                step = table[self._state][byte]
                consumed = not step & _LOOKAHEAD
                new = step & ~_LOOKAHEAD
                if consumed:
                    token.append(byte)
                if new in _TOKEN_TYPES:
                    self._process(new, bytes(token), out)
                    token.clear()
                    new = START
                elif new in (START, RECOVERY):
                    token.clear()
                elif new == ERROR:
                    self._process(ERROR, bytes(token), out)
                    token.clear()
                    new = RECOVERY
                self._state = new
            self._check_token_length(out)
        return pos

    def reset(self) -> None:
        """Forget everything half-read (QEMU re-creates its parser on reconnect)."""
        self.__init__()  # type: ignore[misc]

    def _read_tokens(self, data: bytes, pos: int, out: list[object], stop_when_idle: bool) -> int:
        """Read whole tokens from ``data[pos:]`` while the lexer is in START.

        The same as feeding the bytes one by one, for the tokens that
        ``_START_TOKEN_RE`` recognises; stops at anything else (and, with
        ``stop_when_idle``, between messages). Returns the position reached.
        """
        match = _START_TOKEN_RE.match
        kinds = _GROUP_KINDS
        punct = _PUNCT_TYPES
        tokens = self._tokens
        brace = self._brace
        bracket = self._bracket
        size = self._token_size
        start = pos
        while True:
            if stop_when_idle and not tokens and pos > start:
                break
            m = match(data, pos)
            if m is None:
                break
            end = m.end()
            kind = kinds[m.lastindex or 0]
            if kind == _WS:
                pos = end
                continue
            if end - pos >= MAX_TOKEN_SIZE:
                break  # the lexer's length cut-off: take it byte by byte
            text = data[pos:end]
            pos = end
            if kind == _PUNCT:
                kind = punct[text[0]]
                if kind == LCURLY:
                    brace += 1
                elif kind == RCURLY:
                    brace -= 1
                elif kind == LSQUARE:
                    bracket += 1
                elif kind == RSQUARE:
                    bracket -= 1
            length = len(text)
            error = None
            if size + length + 1 > MAX_TOKEN_SIZE:
                error = "JSON token size limit exceeded"
            elif len(tokens) + 1 > MAX_TOKEN_COUNT:
                error = "JSON token count limit exceeded"
            elif bracket + brace > MAX_NESTING:
                error = "JSON nesting depth limit exceeded"
            if error is None:
                tokens.append((kind, text))
                size += length
                if (brace > 0 or bracket > 0) and brace >= 0 and bracket >= 0:
                    continue
                result = _parse(tokens)
            else:
                result = ParseError(error)
            self._tokens = tokens = []
            brace = bracket = size = 0
            out.append(result)
        self._tokens = tokens
        self._brace = brace
        self._bracket = bracket
        self._token_size = size
        return pos

    def _check_token_length(self, out: list[object]) -> None:
        # The lexer refuses to grow one token past MAX_TOKEN_SIZE.
        if len(self._token) > MAX_TOKEN_SIZE:
            self._process(CUT, bytes(self._token), out)
            self._token.clear()
            self._state = START

    def _process(self, kind: int, text: bytes, out: list[object]) -> None:
        """json_message_process_token(): collect, check limits, parse."""
        if kind == LCURLY:
            self._brace += 1
        elif kind == RCURLY:
            self._brace -= 1
        elif kind == LSQUARE:
            self._bracket += 1
        elif kind == RSQUARE:
            self._bracket -= 1
        elif kind == ERROR:
            self._emit(ParseError("JSON parse error, stray '" + c_string_to_text(text) + "'"), out)
            return
        if self._token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._emit(ParseError("JSON token size limit exceeded"), out)
            return
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            self._emit(ParseError("JSON token count limit exceeded"), out)
            return
        if self._bracket + self._brace > MAX_NESTING:
            self._emit(ParseError("JSON nesting depth limit exceeded"), out)
            return
        self._tokens.append((kind, text))
        self._token_size += len(text)
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return
        self._emit(_parse(self._tokens), out)

    def _emit(self, result: object, out: list[object]) -> None:
        self._brace = 0
        self._bracket = 0
        self._tokens = []
        self._token_size = 0
        out.append(result)
