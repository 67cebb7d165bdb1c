"""Schema files, argument validation with QEMU's texts, and query-qmp-schema.

Expected texts were recorded from qemu-storage-daemon 7.2.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpjobd.errors import QMPError
from qmpjobd.schema import SchemaSet, default_schema_dir


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet()


def _err(schemas: SchemaSet, command: str, args: dict[str, Any]) -> str:
    with pytest.raises(QMPError) as info:
        schemas.validate_arguments(command, args)
    assert info.value.error_class.value == "GenericError"
    return info.value.desc


@pytest.mark.parametrize(
    "command, args, desc",
    [
        ("job-pause", {}, "Parameter 'id' is missing"),
        ("job-pause", {"id": 1}, "Invalid parameter type for 'id', expected: string"),
        ("job-pause", {"id": "a", "x": 1}, "Parameter 'x' is unexpected"),
        ("query-jobs", {"a": 1, "b": 2}, "Parameter 'b' is unexpected"),
        ("query-jobs", {"x": 1, "y": 2}, "Parameter 'y' is unexpected"),
        (
            "block-job-set-speed",
            {"speed": 1.0, "device": "x"},
            "Invalid parameter type for 'speed', expected: integer",
        ),
        (
            "block-job-set-speed",
            {"speed": 9223372036854775808, "device": "x"},
            "Invalid parameter type for 'speed', expected: integer",
        ),
        ("block-job-set-speed", {"speed": 1}, "Parameter 'device' is missing"),
        ("block-job-set-speed", {"speed": "1", "devic": 1}, "Parameter 'device' is missing"),
        (
            "block-job-set-speed",
            {"device": "d", "speed": True},
            "Invalid parameter type for 'speed', expected: integer",
        ),
        (
            "block-job-cancel",
            {"device": "d", "force": "yes"},
            "Invalid parameter type for 'force', expected: boolean",
        ),
        ("qmp_capabilities", {"enable": ["foo"]}, "Parameter 'null' does not accept value 'foo'"),
        (
            "qmp_capabilities",
            {"enable": "oob"},
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            "qmp_capabilities",
            {"enable": [1]},
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
    ],
)
def test_argument_errors(schemas: SchemaSet, command: str, args: dict[str, Any], desc: str) -> None:
    assert _err(schemas, command, args) == desc


def _create_qcow2(file: Any) -> dict[str, Any]:
    return {"job-id": "c", "options": {"driver": "qcow2", "size": 1048576, "file": file}}


#: blockdev-add's arguments are BlockdevOptions itself (boxed), and a
#: blockdev-create BlockdevRef opens those options: texts of 7.2.22 and 10.0.2.
@pytest.mark.parametrize(
    "command, args, desc",
    [
        ("blockdev-add", {}, "Parameter 'driver' is missing"),
        (
            "blockdev-create",
            _create_qcow2({"driver": "file"}),
            "Parameter 'options.file.filename' is missing",
        ),
        (
            "blockdev-create",
            _create_qcow2({"driver": "nope"}),
            "Parameter 'driver' does not accept value 'nope'",
        ),
        (
            "blockdev-create",
            _create_qcow2(5),
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            "blockdev-add",
            {"driver": "raw", "node-name": "r", "file": {"driver": "raw", "file": 5}},
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            "blockdev-create",
            _create_qcow2({"driver": "null-co", "active": False}),
            "Parameter 'options.file.active' is unexpected",
        ),
    ],
)
def test_blockdev_options_errors(
    schemas: SchemaSet, command: str, args: dict[str, Any], desc: str
) -> None:
    assert _err(schemas, command, args) == desc


def test_blockdev_create_opens_the_releases_options() -> None:
    SchemaSet(overlay="10.0").validate_arguments(
        "blockdev-create", _create_qcow2({"driver": "null-co", "active": False})
    )


def test_valid_arguments_pass(schemas: SchemaSet) -> None:
    schemas.validate_arguments("block-job-set-speed", {"device": "d", "speed": -1})
    schemas.validate_arguments("qmp_capabilities", {"enable": ["oob"]})
    schemas.validate_arguments("qmp_capabilities", {})
    schemas.validate_arguments("block-job-cancel", {"device": "d", "force": False})


def test_every_file_is_a_checked_json_schema() -> None:
    root = default_schema_dir()
    folders = [root, *(root / name for name in ("10.0",))]  # the profiles' overlays
    files = [
        (folder.name, path)
        for top in folders
        for folder in top.iterdir()
        if folder.name in ("commands", "events", "types")
        for path in folder.iterdir()
    ]
    assert {folder.name for folder in root.iterdir()} == {"commands", "events", "types", "10.0"}
    assert {folder for folder, _ in files} == {"commands", "events", "types"}
    for folder, path in files:
        assert path.name.endswith(".json"), path
        doc = json.loads(path.read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema", path
        if folder in ("commands", "events") and "$ref" in doc:
            # Boxed arguments: a shared object type, as QEMU's arg-type is.
            assert set(doc) <= {"$schema", "$id", "title", "$ref"}, path
            assert doc["$ref"].startswith("qmpjobd:type/"), path
        elif folder in ("commands", "events"):
            assert doc["type"] == "object" and doc["additionalProperties"] is False, path


def test_introspection_lists_exactly_the_given_entities(schemas: SchemaSet) -> None:
    info = schemas.introspect(["job-pause", "query-jobs"], ["JOB_STATUS_CHANGE"])
    by_name = {e["name"]: e for e in info}
    pause = by_name["job-pause"]
    assert pause["meta-type"] == "command"
    assert by_name[pause["arg-type"]] == {
        "name": pause["arg-type"],
        "members": [{"name": "id", "type": "str"}],
        "meta-type": "object",
    }
    assert by_name[pause["ret-type"]]["members"] == []
    jobs = by_name["query-jobs"]
    element = by_name[jobs["ret-type"]]
    assert element["meta-type"] == "array"
    job_info = by_name[element["element-type"]]
    assert [m["name"] for m in job_info["members"]] == [
        "id",
        "type",
        "status",
        "current-progress",
        "total-progress",
        "error",
    ]
    assert job_info["members"][-1] == {"name": "error", "default": None, "type": "str"}
    status = by_name[job_info["members"][2]["type"]]
    assert status["meta-type"] == "enum" and status["values"][0] == "undefined"
    event = by_name["JOB_STATUS_CHANGE"]
    assert event["meta-type"] == "event"
    assert by_name["str"] == {"name": "str", "json-type": "string", "meta-type": "builtin"}
    commands = [e["name"] for e in info if e["meta-type"] == "command"]
    assert commands == ["job-pause", "query-jobs"]
    # Every type reference resolves to an entity in the list.
    refs = set()
    for entity in info:
        for key in ("arg-type", "ret-type", "element-type"):
            if key in entity:
                refs.add(entity[key])
        for member in entity.get("members", []):
            if "type" in member:
                refs.add(member["type"])
    assert refs <= set(by_name)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(["oob", "x", "d"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "device", "speed", "force", "enable", "x"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(
    command=st.sampled_from(
        ["job-pause", "block-job-set-speed", "block-job-cancel", "qmp_capabilities", "query-jobs"]
    ),
    args=st.dictionaries(
        st.sampled_from(["id", "device", "speed", "force", "enable", "x"]), _json, max_size=4
    ),
)
def test_walk_agrees_with_stock_validator(
    schemas: SchemaSet, command: str, args: dict[str, Any]
) -> None:
    stock_ok = schemas.stock_validator(command).is_valid(args)
    try:
        schemas.validate_arguments(command, args)
        walk_ok = True
    except QMPError:
        walk_ok = False
    assert walk_ok == stock_ok
