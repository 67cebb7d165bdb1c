"""Ids echoed byte for byte when a double cannot hold them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import RawClient


def _strict_json(line: bytes) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    ("raw_id", "echoed"),
    [
        (b"1e999", b"1e999"),
        (b"-1e999", b"-1e999"),
        (b"[1e999, 2]", b"[1e999, 2]"),
        (b"[-1E+999,{'a':1e999}]", b'[-1E+999, {"a": 1e999}]'),
        (b"1" + b"0" * 400, b"1" + b"0" * 400),
        (b"1.5e308", b"1.5e+308"),  # in range: printed as QEMU prints doubles
    ],
)
async def test_out_of_range_number_ids_are_echoed_as_sent(
    sock: Path, raw_id: bytes, echoed: bytes
) -> None:
    client = await RawClient.connect(sock)
    try:
        await client.send_raw(b'{"execute": "query-version", "id": ' + raw_id + b"}")
        line = await client.recv_line()
        assert line.endswith(b', "id": ' + echoed + b"}\r\n")
        _strict_json(line)
        await client.send_raw(b'{"execute": "nope", "id": ' + raw_id + b"}")
        line = await client.recv_line()
        assert line == (
            b'{"id": ' + echoed + b', "error": {"class": "CommandNotFound", '
            b'"desc": "The command nope has not been found"}}\r\n'
        )
    finally:
        await client.close()
