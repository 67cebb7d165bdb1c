"""The wire codec: QEMU's reading of every tricky input, in any chunking, and
QEMU's way of writing JSON.

The expectations in ``test_wire_cases`` were checked against qemu-storage-daemon
7.2 (``test_wire_qemu.py`` re-checks them when one is installed).
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qmpjobd.wire
from qmpjobd.wire import Decoder, ParseError, encode, qemu_order
from qmpjobd.wire.encoder import encode_reference
from qmpjobd.wire.qemu_json import QemuJsonReader
from tests.test_wire_cases import CASES, canon, err, nested_lists

CASE_IDS = [c[0] for c in CASES]
CASE_ARGS = [c[1:] for c in CASES]
SHORT_CASES = [c[1:] for c in CASES if len(c[1]) <= 200]
SHORT_IDS = [c[0] for c in CASES if len(c[1]) <= 200]


def decode_chunks(chunks: list[bytes]) -> list[object]:
    decoder = Decoder()
    out: list[object] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def exact(data: bytes) -> list[object]:
    out: list[object] = []
    QemuJsonReader().feed(data, out)
    return out


# --- the decoder -------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), CASE_ARGS, ids=CASE_IDS)
def test_decoder_reads_like_qemu(data: bytes, expected: list[object]) -> None:
    assert canon(Decoder().feed(data)) == canon(expected)


@pytest.mark.parametrize(("data", "expected"), CASE_ARGS, ids=CASE_IDS)
def test_exact_reader_reads_like_qemu(data: bytes, expected: list[object]) -> None:
    assert canon(exact(data)) == canon(expected)


@pytest.mark.parametrize(("data", "expected"), SHORT_CASES, ids=SHORT_IDS)
def test_split_at_every_byte_offset(data: bytes, expected: list[object]) -> None:
    want = canon(expected)
    for cut in range(1, len(data)):
        assert canon(decode_chunks([data[:cut], data[cut:]])) == want, cut


@pytest.mark.parametrize(("data", "expected"), SHORT_CASES, ids=SHORT_IDS)
def test_byte_at_a_time(data: bytes, expected: list[object]) -> None:
    assert canon(decode_chunks([data[i : i + 1] for i in range(len(data))])) == canon(expected)


def test_all_cases_in_one_stream() -> None:
    # Cases that end between messages can follow one another in one stream.
    stream = b""
    expected: list[object] = []
    for data, items in CASE_ARGS:
        reader = QemuJsonReader()
        out: list[object] = []
        reader.feed(data + b"\n", out)
        if reader.idle and canon(out) == canon(items):
            stream += data + b"\n"
            expected += items
    assert len(expected) > 150
    assert canon(Decoder().feed(stream)) == canon(expected)
    assert canon(decode_chunks([stream[i : i + 7] for i in range(0, len(stream), 7)])) == canon(
        expected
    )


def test_framing_ignores_newlines() -> None:
    decoder = Decoder()
    assert decoder.feed(b'{"execute":') == []
    assert decoder.feed(b'\n"nope"\n') == []
    assert decoder.feed(b'}{"a"') == [{"execute": "nope"}]
    assert decoder.feed(b":1}") == [{"a": 1}]


def test_top_level_scalar_is_answered_when_the_next_byte_arrives() -> None:
    decoder = Decoder()
    assert decoder.feed(b"3") == []
    assert decoder.feed(b"4") == []
    assert decoder.feed(b"{") == [34]
    assert decoder.feed(b"}") == [{}]
    assert decoder.feed(b'"x"') == ["x"]
    assert decoder.feed(b"nul") == []
    assert decoder.feed(b"l]") == [None, err("expecting value")]


def test_number_is_not_complete_until_a_following_byte() -> None:
    decoder = Decoder()
    assert decoder.feed(b"[1") == []
    assert decoder.feed(b"2") == []
    assert decoder.feed(b"]") == [[12]]


def test_integer_types() -> None:
    [items] = Decoder().feed(b"[-0, 9223372036854775807, 18446744073709551615, 1.0, 1e2]")
    assert isinstance(items, list)
    assert [type(v) for v in items] == [int, int, int, float, float]


def test_parse_error_is_a_frozen_value() -> None:
    error = ParseError("JSON parse error, expecting value")
    assert error == ParseError("JSON parse error, expecting value")
    with pytest.raises(AttributeError):
        error.desc = "x"  # type: ignore[misc]


def test_feed_eof_reports_nothing_and_starts_afresh() -> None:
    # QEMU says nothing about a message cut off by the end of the connection.
    decoder = Decoder()
    assert decoder.feed(b'{"execute": "no') == []
    assert decoder.feed_eof() == []
    assert decoder.feed(b'{"a":1}') == [{"a": 1}]
    assert decoder.feed(b"3") == []
    assert decoder.feed_eof() == []
    assert decoder.feed(b" ") == []


def test_fast_route_takes_plain_pipelined_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = QemuJsonReader.feed

    def counting(self: QemuJsonReader, *args: object, **kwargs: object) -> int:
        calls.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(QemuJsonReader, "feed", counting)
    message = b'{"execute": "query-jobs", "id": 123}\r\n'
    out = Decoder().feed(message * 1000)
    assert out == [{"execute": "query-jobs", "id": 123}] * 1000
    assert calls == []


# --- fast route and exact model agree ----------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec=None), max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)

# JSON the C scanner accepts but QEMU may read differently, and JSON (or not)
# that needs QEMU's own rules; the fast route must never disagree.
PLAIN_NUMBERS = [
    b"0",
    b"-0",
    b"0e5",
    b"-0E-1",
    b"1e5",
    b"1.5",
    b"0.0e1",
    b"1e400",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"12345678901234567890123",
]
PLAIN_KEYWORDS = [b"true", b"false", b"null"]
PLAIN_PIECES = [
    b"a",
    b"\\u00e9",
    b"\\ud83d\\ude00",
    b"\\ud800",
    b"\\uDC00",
    b"\\uffff",
    b"\\ufdd0",
    b"\\u0000",
    b'\\"',
    b"\\\\u00e9",
    b"\xc3\xa9",
    b"\xef\xbf\xbe",
    b"\x7f",
    b"\xf0\x9f\x98\x80",
    b"0e5",
    b"'",
]
PLAIN_KEYS = [b'"a"', b'"b"', b'"execute"']
ODD_NUMBERS = [b"01", b"1.", b"-", b"NaN", b"Infinity", b"-Infinity"]
ODD_KEYWORDS = [b"tru", b"nul", b"True"]
ODD_PIECES = [b"\\'", b"\\x", b"\xc0\x80", b"\xed\xa0\x80", b'"', b"\t", b"\x01"]
ODD_KEYS = [b"'a'", b"1"]


@st.composite
def tricky_text(draw: st.DrawFn, odd: bool, depth: int = 0) -> bytes:
    def pick(plain: list[bytes], odd_ones: list[bytes]) -> bytes:
        return draw(st.sampled_from(plain + odd_ones if odd else plain))

    kind = draw(
        st.sampled_from(
            ["number", "keyword", "string", "object", "list"]
            if depth < 3
            else ["number", "keyword", "string"]
        )
    )
    if kind == "number":
        return pick(PLAIN_NUMBERS, ODD_NUMBERS)
    if kind == "keyword":
        return pick(PLAIN_KEYWORDS, ODD_KEYWORDS)
    if kind == "string":
        quote = b"'" if odd and draw(st.booleans()) else b'"'
        pieces = draw(
            st.lists(
                st.sampled_from(PLAIN_PIECES + ODD_PIECES if odd else PLAIN_PIECES), max_size=4
            )
        )
        return quote + b"".join(pieces) + quote
    items = draw(st.lists(tricky_text(odd, depth + 1), max_size=3))
    if kind == "list":
        return b"[" + b", ".join(items) + b"]"
    keys = [pick(PLAIN_KEYS, ODD_KEYS) for _ in items]
    return b"{" + b", ".join(k + b": " + v for k, v in zip(keys, items, strict=True)) + b"}"


INTERESTING = b"{}[],:\"'\\ \t\n\x00\x01\x7f\xff\xfe\xc0\x80\xed0e-.9atuE+%"


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for value in draw(st.lists(json_values, min_size=1, max_size=4)):
        text = json.dumps(
            value,
            ensure_ascii=draw(st.booleans()),
            separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", "\n:")])),
        )
        if isinstance(value, float) and math.isinf(value):
            text = "1e999" if value > 0 else "-1e999"
        text = text.replace("Infinity", "1e999")
        if draw(st.booleans()):
            text = '{"execute": "x", "id": ' + text + "}"
        encoded = text.encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            odd = draw(st.integers(0, 4)) == 0
            encoded = b'{"execute": ' + draw(tricky_text(odd)) + b"}"
        parts.append(encoded)
        parts.append(draw(st.sampled_from([b"", b"\n", b"\r\n", b" ", b"\x01"])))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = draw(st.sampled_from(INTERESTING))
        if op == "insert":
            data.insert(where, byte)
        elif op == "replace":
            data[where] = byte
        else:
            del data[where]
    return bytes(data)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(streams())
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked())
def test_fast_route_agrees_with_exact_model(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    want = canon(exact(data))
    assert canon(Decoder().feed(data)) == want
    assert canon(decode_chunks(chunks)) == want


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_decoding_encoded_values_gives_them_back(value: object) -> None:
    # What QEMU can hold survives encode -> decode, as QEMU would read it.
    encoded = encode(value)
    assert canon(Decoder().feed(encoded)) == canon(exact(encoded))


# --- the encoder -------------------------------------------------------------

ENCODINGS: list[tuple[object, bytes]] = [
    ({"return": {}}, b'{"return": {}}'),
    ({"return": [], "id": 0}, b'{"return": [], "id": 0}'),
    ({"b": 1, "a": [1, 2, {"c": None}]}, b'{"b": 1, "a": [1, 2, {"c": null}]}'),
    ([True, False, None], b"[true, false, null]"),
    ((1, 2), b"[1, 2]"),
    (18446744073709551615, b"18446744073709551615"),
    (-9223372036854775808, b"-9223372036854775808"),
    (0.1, b"0.10000000000000001"),
    (1e5, b"100000"),
    (-0.0, b"-0"),
    (1.5, b"1.5"),
    (1e21, b"1e+21"),
    ({"a": 1e16, "e-": "e+"}, b'{"a": 10000000000000000, "e-": "e+"}'),
    (1e-7, b"9.9999999999999995e-08"),
    (5e-324, b"4.9406564584124654e-324"),
    (1.8446744073709552e19, b"1.8446744073709552e+19"),
    (math.inf, b"inf"),
    (-math.inf, b"-inf"),
    ("\u00e9", b'"\\u00E9"'),
    ("\U0001f600", b'"\\uD83D\\uDE00"'),
    ("\x7f\x00\x1f", b'"\\u007F\\u0000\\u001F"'),
    ('\b\f\n\r\t"\\/', b'"\\b\\f\\n\\r\\t\\"\\\\/"'),
    ("\ufffe\ufdd0\U0001ffff", b'"\\uFFFD\\uFFFD\\uFFFD"'),
    ("\ud800", b'"\\uFFFD"'),
    ("a\\u00e9 1.5e3 NaN Infinity", b'"a\\\\u00e9 1.5e3 NaN Infinity"'),
    ({"\u00e9": 0.5}, b'{"\\u00E9": 0.5}'),
    ({"x": [1.0, 2, "3.0"]}, b'{"x": [1, 2, "3.0"]}'),
]


@pytest.mark.parametrize(("value", "expected"), ENCODINGS, ids=[repr(e) for _, e in ENCODINGS])
def test_encode_like_qemu(value: object, expected: bytes) -> None:
    assert encode(value) == expected + b"\r\n"
    assert encode_reference(value) == expected + b"\r\n"


def test_encode_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        encode({"a": object()})
    with pytest.raises(TypeError):
        encode_reference({"a": b"x"})


@settings(max_examples=300, deadline=None)
@given(json_values | st.floats())
def test_encoder_agrees_with_reference(value: object) -> None:
    assert encode(value) == encode_reference(value)


# --- layering ----------------------------------------------------------------

ALLOWED_IMPORTS = {"__future__", "collections.abc", "dataclasses", "json", "math", "re", "typing"}


def test_wire_imports_only_the_standard_library_basics() -> None:
    package = Path(qmpjobd.wire.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in ALLOWED_IMPORTS or name.startswith("qmpjobd.wire"), (path, name)


# --- QDict member order --------------------------------------------------------


def test_qemu_order_matches_qemus_hash_order() -> None:
    # Orders seen from qemu-storage-daemon 7.2.
    assert list(qemu_order({"b": [], "a": 1, "c": 2, "execute": 3, "id": 4})) == [  # type: ignore[call-overload]
        "a",
        "execute",
        "b",
        "c",
        "id",
    ]
    assert list(qemu_order({"id": 1, "return": {}})) == ["return", "id"]  # type: ignore[call-overload]
    assert list(qemu_order({"error": {}, "id": 1})) == ["id", "error"]  # type: ignore[call-overload]
    job = {
        "id": "j",
        "type": "backup",
        "status": "running",
        "current-progress": 0,
        "total-progress": 1,
    }
    assert list(qemu_order(job)) == [  # type: ignore[call-overload]
        "current-progress",
        "status",
        "total-progress",
        "type",
        "id",
    ]


def test_qemu_order_reorders_nested_objects_only() -> None:
    value = {"x": [{"b": 1, "a": 2}], "s": "t"}
    assert qemu_order(value) == value
    assert list(qemu_order(value)["x"][0]) == ["a", "b"]  # type: ignore[index]
    assert qemu_order([1, "a", None]) == [1, "a", None]


def test_deep_values_encode_and_order() -> None:
    # QEMU accepts, and echoes, ids nested 1023 deep inside the request.
    deep = {"id": nested_lists(1023), "d": {"b": {"b": 1, "a": 2}}}
    assert (
        encode(deep)
        == b'{"id": ' + b"[" * 1023 + b"]" * 1023 + b', "d": {"b": {"b": 1, "a": 2}}}\r\n'
    )
    assert encode(deep) == encode_reference(deep)
    ordered = qemu_order(deep)
    assert isinstance(ordered, dict)
    assert list(ordered["d"]["b"]) == ["a", "b"]
    assert encode(ordered["id"]) == encode(deep["id"])
