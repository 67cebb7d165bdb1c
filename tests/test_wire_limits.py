"""QEMU's JSON limits: token size, token count, and what is read after them.

These feed megabytes through the exact reader, so they live apart from the
quick table tests. The same inputs were checked against qemu-storage-daemon
(``test_wire_qemu.py``).
"""

from __future__ import annotations

from qmpjobd.wire import Decoder, ParseError
from qmpjobd.wire.qemu_json import MAX_TOKEN_COUNT, MAX_TOKEN_SIZE
from tests.test_wire_cases import canon

SIZE = ParseError("JSON token size limit exceeded")
COUNT = ParseError("JSON token count limit exceeded")
EXPECTING = ParseError("JSON parse error, expecting value")


def decode(*chunks: bytes) -> list[object]:
    decoder = Decoder()
    out: list[object] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def test_limits_are_qemus() -> None:
    assert MAX_TOKEN_SIZE == 64 * 1024 * 1024
    assert MAX_TOKEN_COUNT == 2 * 1024 * 1024


def test_string_just_under_the_token_size_limit() -> None:
    # A token of 64 Mi - 1 bytes, quotes included, is accepted.
    body = b"a" * (MAX_TOKEN_SIZE - 3)
    [value, error] = decode(b'"' + body + b'"]')
    assert value == body.decode()
    assert error == EXPECTING


def test_string_of_exactly_the_token_size_limit() -> None:
    # The streamer refuses a message whose token bytes reach 64 Mi; what
    # follows is read as new input.
    assert decode(b'["' + b"a" * (MAX_TOKEN_SIZE - 2) + b'"]') == [SIZE, EXPECTING]


def test_lexer_cuts_a_token_longer_than_the_limit() -> None:
    # Past 64 Mi bytes the lexer gives up on the string; the rest of its
    # body is read as bare words.
    data = b'"' + b"a" * MAX_TOKEN_SIZE + b'b c"x'
    assert decode(data[:1000], data[1000:]) == [
        SIZE,
        ParseError("JSON parse error, invalid keyword 'b'"),
        ParseError("JSON parse error, invalid keyword 'c'"),
    ]


def test_exactly_the_token_count_limit() -> None:
    ok = b"[[]," + b"0," * (MAX_TOKEN_COUNT // 2 - 3) + b"0]"
    assert canon(decode(ok)) == canon([[[], *[0] * (MAX_TOKEN_COUNT // 2 - 2)]])


def test_one_token_over_the_count_limit() -> None:
    over = b"[" + b"0," * (MAX_TOKEN_COUNT // 2) + b"0]"
    assert canon(decode(over[:7], over[7:])) == canon([COUNT, 0, EXPECTING])
