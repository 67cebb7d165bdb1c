"""Inputs and what QEMU 7.2 reads from them, shared by the wire tests (no tests here).

Each case is ``(name, input bytes, expected items)``: the decoded values and
:class:`ParseError` items that :class:`qmpjobd.wire.Decoder` must return when
fed the input in one piece. The expectations were checked against a live
qemu-storage-daemon 7.2 (``test_wire_qemu.py`` re-checks them when one is
installed), through the replies QEMU sends for each item.

:func:`canon` gives decoded items a typed form for exact comparison: Python's
``==`` says ``1 == 1.0 == True`` and ``0.0 == -0.0``; QEMU does not.
"""

from __future__ import annotations

import math

from qmpjobd.wire import ParseError


def err(text: str) -> ParseError:
    """A parser or lexer error, with QEMU's common prefix."""
    return ParseError("JSON parse error, " + text)


NESTING = ParseError("JSON nesting depth limit exceeded")
NOPE = {"execute": "nope"}


def nested_lists(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


CASES: list[tuple[str, bytes, list[object]]] = [
    # --- framing -----------------------------------------------------------
    ("object", b'{"execute":"nope"}', [NOPE]),
    ("object with id", b'{"execute": "nope", "id": 123}', [{"execute": "nope", "id": 123}]),
    ("two objects on one line", b'{"a":1}{"b":2}', [{"a": 1}, {"b": 2}]),
    ("crlf separated", b'{"a":1}\r\n{"b":2}\r\n', [{"a": 1}, {"b": 2}]),
    ("whitespace everywhere", b' \t\r\n{ "a" :\t[ 1 ,\n2 ] }\n\n', [{"a": [1, 2]}]),
    ("incomplete object", b'{"execute": "nope", "id":', []),
    ("incomplete string", b'{"execute": "no', []),
    ("empty object", b"{}", [{}]),
    ("top-level list", b"[1,2]", [[1, 2]]),
    ("top-level empty list", b"[]", [[]]),
    ("top-level string", b'"x"', ["x"]),
    ("top-level number waits", b"3", []),
    ("top-level number", b"3\n", [3]),
    ("top-level keyword waits", b"true", []),
    ("top-level keyword", b"true ", [True]),
    ("null then comma", b"null,", [None, err("expecting value")]),
    ("value then stray closer", b'{"a":1}}', [{"a": 1}, err("expecting value")]),
    # --- numbers -----------------------------------------------------------
    ("small integers", b"[0,-0,1,-1,123456789]", [[0, 0, 1, -1, 123456789]]),
    (
        "int64 and uint64 edges",
        b"[9223372036854775807,-9223372036854775808,9223372036854775808,"
        b"18446744073709551615,18446744073709551616,-9223372036854775809]",
        [[2**63 - 1, -(2**63), 2**63, 2**64 - 1, 1.8446744073709552e19, -9.223372036854776e18]],
    ),
    ("huge integer", b"[" + b"9" * 400 + b"]", [[math.inf]]),
    (
        "floats",
        b"[1e5,1E5,-0.0,0.1,1e400,-1e400,1.5e-3,5e-324,1e-400,2.5E+2]",
        [[100000.0, 100000.0, -0.0, 0.1, math.inf, -math.inf, 0.0015, 5e-324, 0.0, 250.0]],
    ),
    ("exponent after zero", b'{"a":0e5}', [err("expected separator in dict")]),
    ("top-level zero then word", b"0e5 ", [0, err("invalid keyword 'e'"), 5]),
    ("leading zero", b"01 ", [err("stray '01'")]),
    ("leading zero in object", b'{"a":01}', [err("stray '01'"), err("expecting value")]),
    ("minus alone", b"-j", [err("stray '-j'")]),
    ("dot without digits", b"1.x", [err("stray '1.x'")]),
    ("exponent without digits", b"1e+ ", [err("stray '1e+ '")]),
    ("leading dot", b".5 ", [err("stray '.'")]),
    ("leading plus", b"+1 ", [err("stray '+'")]),
    ("trailing dot in list", b"[1.5,2.]", [err("stray '2.]'")]),
    # --- keywords ----------------------------------------------------------
    ("bad keyword", b'{"a":tru}', [err("invalid keyword 'tru'")]),
    ("bad keyword in list", b"[nul]", [err("invalid keyword 'nul'")]),
    ("capitalised keyword", b"True", [err("stray 'T'")]),
    (
        "capitalised keyword in object",
        b'{"execute": True}',
        [err("stray 'T'"), err("expecting value")],
    ),
    (
        "long keyword is cut in the message",
        b"a" * 2000 + b" ",
        [err("invalid keyword '" + "a" * 1006)],
    ),
    ("keyword then stray", b"abc@", [err("invalid keyword 'abc'"), err("stray '@'")]),
    # --- syntax ------------------------------------------------------------
    ("missing colon", b'{"a" 1}', [err("missing : in object pair")]),
    ("missing value", b'{"a":}', [err("expecting value")]),
    ("number key", b"{1:2}", [err("key is not a string in object")]),
    ("list key", b"{[1]:2}", [err("key is not a string in object")]),
    ("broken list key", b"{[1 2]:2}", [err("expected separator in list")]),
    ("trailing comma in object", b'{"a":1,}', [err("expecting value")]),
    ("trailing comma in list", b"[1,]", [err("expecting value")]),
    ("missing comma in list", b"[1 2]", [err("expected separator in list")]),
    ("missing comma in object", b'{"a":1 "b":2}', [err("expected separator in dict")]),
    ("list closed by brace", b"[1}", [err("expected separator in list")]),
    ("object closed by bracket", b'{"a":1]', [err("expected separator in dict")]),
    ("object with bracket inside", b"[{]}", [err("expecting value")]),
    ("lone closing brace", b"}", [err("expecting value")]),
    ("lone closing bracket", b"]", [err("expecting value")]),
    ("lone comma", b",", [err("expecting value")]),
    ("lone colon", b":", [err("expecting value")]),
    ("duplicate key", b'{"execute":"nope","id":1, "id":2}', [err("duplicate key")]),
    ("nested duplicate key", b'{"a":{"b":1,"b":2}}', [err("duplicate key")]),
    ("bad value before duplicate", b'{"a":{"b":1,"b":x}}', [err("invalid keyword 'x'")]),
    (
        "stray inside object resynchronises at comma",
        b'{"a": @x, "b": 1}',
        [
            err("stray '@'"),
            err("expecting value"),
            "b",
            err("expecting value"),
            1,
            err("expecting value"),
        ],
    ),
    # --- strings -----------------------------------------------------------
    (
        "single quotes",
        b"{'execute':'nope','id':'it\\'s \"q\"'}",
        [{"execute": "nope", "id": 'it\'s "q"'}],
    ),
    ("escaped NUL", b'{"a":"\\u0000"}', [{"a": "\x00"}]),
    (
        "all escapes",
        b'{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u00E9\\ud83d\\ude00\\\'"}',
        [{"a": "\"\\/\b\f\n\r\t\u00e9\u00e9\U0001f600'"}],
    ),
    ("lone high surrogate", b'{"a":"\\ud83d"}', [err("\\ud83d is not a valid Unicode character")]),
    (
        "high surrogate then letter",
        b'{"a":"\\ud83dx"}',
        [err("\\ud83d is not a valid Unicode character")],
    ),
    (
        "high surrogate then non-surrogate",
        b'{"a":"\\ud83d\\u0041"}',
        [err("\\ud83d is not a valid Unicode character")],
    ),
    ("lone low surrogate", b'{"a":"\\uDE00"}', [err("\\uDE00 is not a valid Unicode character")]),
    ("escaped noncharacter", b'{"a":"\\uffff"}', [err("\\uffff is not a valid Unicode character")]),
    (
        "escaped noncharacter FDD0",
        b'{"a":"\\uFDD0"}',
        [err("\\uFDD0 is not a valid Unicode character")],
    ),
    (
        "astral noncharacter pair",
        b'{"a":"\\ud83f\\udffe"}',
        [err("\\ud83f\\udffe is not a valid Unicode character")],
    ),
    ("short unicode escape", b'{"a":"\\u1"}', [err('\\u1" is not a valid Unicode character')]),
    (
        "non-hex unicode escape",
        b'{"a":"\\uZZZZ"}',
        [err("\\uZZZZ is not a valid Unicode character")],
    ),
    ("invalid escape", b'{"a":"\\x"}', [err("invalid escape sequence in string")]),
    ("raw UTF-8", b'{"a":"\xc3\xa9\xf0\x9f\x98\x80\x7f"}', [{"a": "\u00e9\U0001f600\x7f"}]),
    ("modified UTF-8 NUL", b'{"a":"\xc0\x80"}', [{"a": "\x00"}]),
    ("raw noncharacter", b'{"a":"\xef\xbf\xbe"}', [err("invalid UTF-8 sequence in string")]),
    ("raw surrogate", b'{"a":"\xed\xa0\x80"}', [err("invalid UTF-8 sequence in string")]),
    ("truncated sequence", b'{"a":"\xe9"}', [err("invalid UTF-8 sequence in string")]),
    ("overlong 2-byte", b'{"a":"\xc1\xbf"}', [err("invalid UTF-8 sequence in string")]),
    ("overlong 3-byte", b'{"a":"\xe0\x80\xaf"}', [err("invalid UTF-8 sequence in string")]),
    ("beyond U+10FFFF", b'{"a":"\xf4\x90\x80\x80"}', [err("invalid UTF-8 sequence in string")]),
    ("5-byte sequence", b'{"a":"\xf8\x88\x80\x80\x80"}', [err("invalid UTF-8 sequence in string")]),
    (
        "first string error wins (UTF-8)",
        b'{"a":"\xe9\\x"}',
        [err("invalid UTF-8 sequence in string")],
    ),
    (
        "first string error wins (escape)",
        b'{"a":"\\x\\ud800"}',
        [err("invalid escape sequence in string")],
    ),
    ("0xFE in string", b'"a\xfeb"', [err("stray '\"a\ufffd'")]),
    ("raw TAB in string", b'{"a":"a\tb"}', [err("stray '\"a\t'"), err("expecting value")]),
    ("raw newline in string", b'"a\nb"', [err("stray '\"a\n'")]),
    ("NUL in string", b'"ab\x00cd"', [err("stray '\"ab'")]),
    ("bad UTF-8 in stray text", b'"\xc3\xa9\xe9\x01"', [err("stray '\"\u00e9\ufffd\x01'")]),
    # --- control bytes and resynchronisation --------------------------------
    ("0x01", b"\x01", [err("stray '\x01'")]),
    ("0xFF", b"\xff", [err("stray '\ufffd'")]),
    ("0xFE", b"\xfe", [err("stray '\ufffd'")]),
    ("0x7F", b"\x7f", [err("stray '\x7f'")]),
    ("NUL", b"\x00", [err("stray ''")]),
    ("percent", b"%d", [err("stray '%'")]),
    ("BOM", b'\xef\xbb\xbf{"execute":"nope"}', [err("stray '\ufffd'"), NOPE]),
    ("0x7F then object", b'\x7f{"a":1}', [err("stray '\x7f'"), {"a": 1}]),
    ("0x01 inside object", b'{"a":\x01{"execute":"nope"}', [err("stray '\x01'"), NOPE]),
    ("0x01 inside string", b'{"a":"abc\x01{"execute":"nope"}', [err("stray '\"abc\x01'"), NOPE]),
    ("0xFF then newline", b'{"a":\xff\n{"b":1}', [err("stray '\ufffd'"), {"b": 1}]),
    (
        "0x01 after a number in a list",
        b'{"a":[1,2\x01]}',
        [err("stray '\x01'"), err("expecting value"), err("expecting value")],
    ),
    ("recovery skips to newline", b'@@@\n{"a":1}', [err("stray '@'"), {"a": 1}]),
    ("recovery keeps TAB skipping", b'@\t@\n{"a":1}', [err("stray '@'"), {"a": 1}]),
    ("two 0x01", b"\x01\x01", [err("stray '\x01'"), err("stray '\x01'")]),
    # --- limits ------------------------------------------------------------
    (
        "nesting 1024 accepted",
        b'{"a":' + b"[" * 1023 + b"]" * 1023 + b"}",
        [{"a": nested_lists(1023)}],
    ),
    (
        "nesting 1025 rejected",
        b"[" * 1025 + b"]" * 1025,
        [NESTING] + [err("expecting value")] * 1025,
    ),
    (
        "nesting 1025 with object",
        b"{" + b'"a":' + b"[" * 1024 + b"]" * 1024 + b"}",
        [NESTING] + [err("expecting value")] * 1025,
    ),
]


def canon(item: object) -> object:
    """Turn a decoded item into nested tuples tagged with exact types."""
    out: list[object] = []
    stack: list[object] = [item]
    while stack:
        v = stack.pop()
        if isinstance(v, _Close):
            out.append(v.tag)
        elif isinstance(v, ParseError):
            out.append(("error", v.desc))
        elif isinstance(v, dict):
            out.append("{")
            stack.append(_Close("}"))
            for k, x in reversed(list(v.items())):
                stack.append(x)
                stack.append(("key", k))
        elif isinstance(v, list):
            out.append("[")
            stack.append(_Close("]"))
            stack.extend(reversed(v))
        elif isinstance(v, tuple):
            out.append(v)
        elif isinstance(v, float):
            out.append(("float", v.hex()))
        else:
            out.append((type(v).__name__, v))
    return tuple(out)


class _Close:
    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag
