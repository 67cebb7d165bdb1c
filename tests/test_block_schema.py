"""The blockdev-add / blockdev-del argument schemas.

The schema layer checks the base object of blockdev-add first, then the
variant chosen by ``driver`` (``x-union``), recursively for nested
BlockdevRef objects. This file composes the same check from plain JSON
Schema, to make sure the files accept what the block layer handles and
refuse what QEMU 7.2 refuses before any side effect.

``NESTED_ARGUMENT_ERRORS`` lists the texts 7.2 answered for members inside
nested objects and lists (recorded live), for the schema layer's mapping.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"


def load(name: str, folder: str = "commands") -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / folder / f"{name}.json").read_text())
    return schema


def composed_blockdev_add() -> dict[str, Any]:
    """blockdev-add as one plain 2020-12 schema: base + variant per driver, recursively."""
    assert load("blockdev-add")["$ref"] == "qmpjobd:type/BlockdevOptions"  # boxed, as QEMU's
    text = json.dumps(load("BlockdevOptions", "types"))
    for name in ("BlockdevRefOrNull", "BlockdevRef"):
        text = text.replace(f'"qmpjobd:type/{name}"', f'"#/$defs/{name}"')
    src = json.loads(text)
    defs = copy.deepcopy(src["$defs"])
    base_props = src["properties"]
    branches = []
    for driver, variant in src["x-union"]["variants"].items():
        branches.append(
            {
                "if": {"properties": {"driver": {"const": driver}}},
                "then": {
                    "properties": {**base_props, **variant["properties"]},
                    "required": ["driver", *variant.get("required", [])],
                    "additionalProperties": False,
                },
            }
        )
    defs["BlockdevOptions"] = {
        "type": "object",
        "required": ["driver"],
        "properties": {"driver": base_props["driver"]},
        "allOf": branches,
    }
    defs["BlockdevRef"] = {"anyOf": [{"$ref": "#/$defs/BlockdevOptions"}, {"type": "string"}]}
    defs["BlockdevRefOrNull"] = {"anyOf": [defs["BlockdevRef"], {"type": "null"}]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "$ref": "#/$defs/BlockdevOptions",
    }


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = composed_blockdev_add()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_files_are_valid_schemas() -> None:
    for name in ("blockdev-add", "blockdev-del"):
        schema = load(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("additionalProperties", False) is False
    assert load("BlockdevOptions", "types")["additionalProperties"] is False


def test_blockdev_del_schema() -> None:
    v = jsonschema.Draft202012Validator(load("blockdev-del"))
    assert v.is_valid({"node-name": "x"})
    assert not v.is_valid({})
    assert not v.is_valid({"node-name": "x", "force": True})
    assert not v.is_valid({"node-name": 1})


GOOD = [
    {"driver": "null-co", "node-name": "n", "size": 4096, "latency-ns": 5, "read-zeroes": True},
    {"driver": "null-aio"},
    {
        "driver": "file",
        "node-name": "f",
        "filename": "/x",
        "aio": "threads",
        "locking": "off",
        "cache": {"direct": False, "no-flush": True},
        "detect-zeroes": "unmap",
        "discard": "unmap",
        "read-only": True,
        "auto-read-only": True,
        "force-share": True,
    },
    {"driver": "raw", "node-name": "r", "file": "f", "offset": 0, "size": 512},
    {"driver": "raw", "node-name": "r", "file": {"driver": "raw", "file": {"driver": "null-co"}}},
    {
        "driver": "blkdebug",
        "node-name": "b",
        "image": {"driver": "file", "filename": "/x"},
        "config": "/dev/null",
        "align": 4096,
        "inject-error": [
            {
                "event": "write_aio",
                "state": 1,
                "iotype": "flush",
                "errno": 28,
                "sector": 8,
                "once": True,
                "immediately": False,
            }
        ],
        "set-state": [{"event": "pwritev", "state": 1, "new_state": 2}],
        "take-child-perms": ["write"],
    },
    # node-name is checked by the block layer, not the schema
    {"driver": "null-co"},
]


@pytest.mark.parametrize("args", GOOD)
def test_accepts(validator: jsonschema.Draft202012Validator, args: dict[str, Any]) -> None:
    assert list(validator.iter_errors(args)) == []


#: (arguments, 7.2's text), recorded from qemu-storage-daemon 7.2.22.
NESTED_ARGUMENT_ERRORS: list[tuple[dict[str, Any], str]] = [
    (
        {"inject-error": [{"event": "write_aio", "errno": "x"}]},
        "Invalid parameter type for 'inject-error[0].errno', expected: integer",
    ),
    ({"inject-error": [{"event": "bogus"}]}, "Parameter 'event' does not accept value 'bogus'"),
    (
        {"inject-error": [{"event": "write_aio", "bogus": 1}]},
        "Parameter 'inject-error[0].bogus' is unexpected",
    ),
    ({"inject-error": [{}]}, "Parameter 'inject-error[0].event' is missing"),
    (
        {"inject-error": [{"event": "write_aio", "iotype": "bogus"}]},
        "Parameter 'iotype' does not accept value 'bogus'",
    ),
    (
        {"inject-error": [{"event": "write_aio", "iotype": ["read", "bogus"]}]},
        "Invalid parameter type for 'inject-error[0].iotype', expected: string",
    ),
    (
        {"inject-error": {"event": "write_aio"}},
        "Invalid parameter type for 'inject-error', expected: array",
    ),
    ({"inject-error": [5]}, "Invalid parameter type for 'inject-error[0]', expected: object"),
    (
        {"image": {"driver": "null-co", "size": "x"}},
        "Invalid parameter type for 'image.size', expected: integer",
    ),
]

#: Same for raw's nested ``file``.
NESTED_FILE_ERRORS: list[tuple[Any, str]] = [
    (
        {"driver": "file", "filename": 5},
        "Invalid parameter type for 'file.filename', expected: string",
    ),
    ({"driver": "file"}, "Parameter 'file.filename' is missing"),
    ({"driver": "file", "filename": "/x", "bogus": 1}, "Parameter 'file.bogus' is unexpected"),
    ({"driver": "nope"}, "Parameter 'driver' does not accept value 'nope'"),
    ({}, "Parameter 'file.driver' is missing"),
    (5, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (None, "Invalid parameter type for 'file', expected: BlockdevRef"),
    (
        {"driver": "raw", "file": {"driver": "file", "filename": 9}},
        "Invalid parameter type for 'file.file.filename', expected: string",
    ),
    (
        {"driver": "file", "filename": "/x", "aio": "bogus"},
        "Parameter 'aio' does not accept value 'bogus'",
    ),
    (
        {"driver": "file", "filename": "/x", "read-only": "no"},
        "Invalid parameter type for 'file.read-only', expected: boolean",
    ),
    (
        {"driver": "file", "filename": "/x", "cache": {"direct": "x"}},
        "Invalid parameter type for 'file.cache.direct', expected: boolean",
    ),
]


@pytest.mark.parametrize(("extra", "text"), NESTED_ARGUMENT_ERRORS)
def test_refuses_nested_blkdebug(
    validator: jsonschema.Draft202012Validator, extra: dict[str, Any], text: str
) -> None:
    args = {"driver": "blkdebug", "node-name": "x", "image": "n0", **extra}
    assert not validator.is_valid(args), text


@pytest.mark.parametrize(("file", "text"), NESTED_FILE_ERRORS)
def test_refuses_nested_file(
    validator: jsonschema.Draft202012Validator, file: Any, text: str
) -> None:
    assert not validator.is_valid({"driver": "raw", "node-name": "x", "file": file}), text


@pytest.mark.parametrize(
    "args",
    [
        {"driver": "nope", "node-name": "x"},
        {"driver": "file", "node-name": "x"},
        {"driver": "raw", "node-name": "x"},
        {"driver": "blkdebug", "node-name": "x"},
        {"driver": "null-co", "node-name": "x", "bogus": 1},
        {"driver": "null-co", "node-name": "x", "filename": "/x"},
        {"driver": "null-co", "node-name": "x", "size": 1.5},
        {"driver": "null-co", "node-name": "x", "size": "5"},
        {"driver": "null-co", "node-name": "x", "size": 1 << 63},
        {"driver": "null-co", "node-name": 5},
        {"driver": "raw", "node-name": "x", "cache": {"direct": "x"}, "file": "f1"},
        {"driver": "null-co", "detect-zeroes": "maybe"},
    ],
)
def test_refuses(validator: jsonschema.Draft202012Validator, args: dict[str, Any]) -> None:
    assert not validator.is_valid(args)
