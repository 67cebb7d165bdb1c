"""Differential tests: the decoder and encoder against a live qemu-storage-daemon.

Every case of ``test_wire_cases.CASES`` is sent to QEMU on a fresh, negotiated
connection; QEMU's replies must be, byte for byte, what the protocol layer
will send for the items the decoder yields (encoded with our encoder). After
each case, ``0xFF`` and a sentinel command are sent; what they produce is
taken from a decoder that has read the case, so leftover state is checked
too. Skipped when no qemu-storage-daemon is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from qmpjobd.wire import Decoder, ParseError, encode, qemu_order
from tests.test_wire_cases import CASES

QSD = shutil.which("qemu-storage-daemon")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QSD is None, reason="qemu-storage-daemon not installed"),
]

SENTINEL = b'{"execute":"nope","id":"sentinel"}'


def generic(desc: str) -> dict[str, object]:
    return {"error": {"class": "GenericError", "desc": desc}}


def qemu_reply(item: object) -> bytes:
    """QEMU's reply to one decoded item, for the shapes the cases use."""
    if isinstance(item, ParseError):
        return encode(generic(item.desc))
    if not isinstance(item, dict):
        return encode(generic("QMP input must be a JSON object"))
    reply: dict[str, object] = {}
    if "id" in item:
        reply["id"] = qemu_order(item["id"])
    others = [k for k in item if k not in ("id", "execute")]
    if "execute" in item and not others:
        reply["error"] = {
            "class": "CommandNotFound",
            "desc": f"The command {item['execute']} has not been found",
        }
    elif not others:
        reply.update(generic("QMP input lacks member 'execute'"))
    else:
        assert len(others) == 1 and "id" not in item, f"ambiguous reply for {item!r}"
        reply.update(generic(f"QMP input member '{others[0]}' is unexpected"))
    return encode(reply)


class Qsd:
    def __init__(self, path: str) -> None:
        self.path = path

    def exchange(self, data: bytes, until: bytes) -> list[bytes]:
        """Negotiate, send ``data``, return reply lines up to one containing ``until``."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(float(os.environ.get("QMPJOBD_QEMU_TIMEOUT", "30")))
            sock.connect(self.path)
            buf = b""

            def line() -> bytes:
                nonlocal buf
                while b"\r\n" not in buf:
                    chunk = sock.recv(1 << 20)
                    assert chunk, "qemu-storage-daemon closed the connection"
                    buf += chunk
                head, buf = buf.split(b"\r\n", 1)
                return head + b"\r\n"

            assert line().startswith(b'{"QMP"')
            sock.sendall(b'{"execute":"qmp_capabilities"}')
            assert line() == b'{"return": {}}\r\n'
            sock.sendall(data)
            lines = []
            while True:
                lines.append(line())
                if until in lines[-1]:
                    return lines


@pytest.fixture(scope="module")
def qsd() -> Iterator[Qsd]:
    assert QSD is not None
    # A short directory: Unix socket paths are limited to about 100 bytes.
    tmp = tempfile.mkdtemp(prefix="qw")
    path = os.path.join(tmp, "m.sock")
    proc = subprocess.Popen(
        [QSD, "--chardev", f"socket,id=m,path={path},server=on,wait=off", "--monitor", "chardev=m"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            try:
                proc.wait(0.025)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail("qemu-storage-daemon exited")
        yield Qsd(path)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def check(qsd: Qsd, data: bytes, expected: list[object]) -> None:
    decoder = Decoder()
    assert [qemu_reply(i) for i in decoder.feed(data)] == [qemu_reply(i) for i in expected]
    tail = decoder.feed(b"\xff" + SENTINEL)
    want = [qemu_reply(i) for i in [*expected, *tail]]
    assert qsd.exchange(data + b"\xff" + SENTINEL, b'"sentinel"') == want


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case_against_qemu(qsd: Qsd, data: bytes, expected: list[object]) -> None:
    check(qsd, data, expected)


def test_echoed_ids_are_encoded_like_qemu(qsd: Qsd) -> None:
    # QEMU re-serialises the id it echoes: our encoder must print it the same.
    ids = [
        b"[0.1,1e5,-0.0,-0,1e400,-1e400,18446744073709551615,18446744073709551616,"
        b"-9223372036854775808,-9223372036854775809,5e-324,1.5,1.7976931348623157e308,"
        b"123456789012345678901234567890,0.30000000000000004,100,1e21,1e-7,123.456]",
        b'["\\u00e9\\ud83d\\ude00\\u007f\\b\\f/\\u0000\\u001f\\"\\\\\\\'\\n\\r\\t", {}, [], '
        b'{"b":[]}, true, false, null, "\\u0080\\u00ff\\u0100\\uFFFD\\u2028"]',
        b'"\xc3\xa9\xf0\x9f\x98\x80\x7f\xc0\x80\xe2\x80\xa8"',
        b'[[[[]]], [{}], {"x": {"y": [1, "z"]}}]',
        b'{"b":[],"a":1,"c":2,"execute":3,"id":4,"\\u00e9":5,"":6,"\\u0000":7,'
        b'"device":{"node-name":1,"driver":2,"file":3,"size":4,"x":5}}',
        b"[" * 1023 + b"]" * 1023,
        b'{"a":' * 1022 + b"{}" + b"}" * 1022,
    ]
    for raw in ids:
        data = b'{"execute":"nope","id":' + raw + b"}"
        [item] = Decoder().feed(data)
        # The one deliberate difference: a number beyond a double's range is
        # echoed as the client wrote it; QEMU writes inf, which is not JSON.
        ours = qemu_reply(item)
        assert b"inf" not in ours
        qemu_bytes = ours.replace(b"-1e400", b"-inf").replace(b"1e400", b"inf")
        assert qsd.exchange(data, b'"error"') == [qemu_bytes]


@pytest.mark.skipif(
    not os.environ.get("QMPJOBD_SLOW_QEMU_TESTS"),
    reason="QEMU reads its monitor a byte at a time: 200 MB take minutes",
)
def test_token_size_limit_against_qemu(qsd: Qsd) -> None:
    size = 64 << 20
    check(
        qsd,
        b'"' + b"a" * (size - 3) + b'"]',
        ["a" * (size - 3), ParseError("JSON parse error, expecting value")],
    )
    check(
        qsd,
        b'["' + b"a" * (size - 2) + b'"]',
        [
            ParseError("JSON token size limit exceeded"),
            ParseError("JSON parse error, expecting value"),
        ],
    )
    check(
        qsd,
        b'"' + b"a" * size + b'b c"x',
        [
            ParseError("JSON token size limit exceeded"),
            ParseError("JSON parse error, invalid keyword 'b'"),
            ParseError("JSON parse error, invalid keyword 'c'"),
        ],
    )


@pytest.mark.skipif(
    not os.environ.get("QMPJOBD_SLOW_QEMU_TESTS"),
    reason="QEMU reads its monitor a byte at a time: 8 MB take 30 s",
)
def test_token_count_limit_against_qemu(qsd: Qsd) -> None:
    count = 2 << 20
    # "[[]," then 2**20 - 3 times "0," then "0]": exactly 2 Mi tokens.
    ok = b"[[]," + b"0," * (count // 2 - 3) + b"0]"
    check(qsd, ok, [[[], *[0] * (count // 2 - 2)]])
    # One more token: the last ',' is refused; '0' and ']' are read afresh.
    over = b"[" + b"0," * (count // 2) + b"0]"
    check(
        qsd,
        over,
        [
            ParseError("JSON token count limit exceeded"),
            0,
            ParseError("JSON parse error, expecting value"),
        ],
    )
