"""Envelope checks, replies and the QEMU dictionary orders (sans I/O).

Expected texts and member choices were recorded from qemu-storage-daemon 7.2.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpjobd import protocol, wire
from qmpjobd.errors import ErrorClass, QMPError
from qmpjobd.events import Event
from qmpjobd.protocol import NO_ID, RequestError, _check_in_qemu_order, check_request
from qmpjobd.wire.qdict import first_unexpected, ghash_order, qdict_order, qemu_order


def _error(obj: object, *, oob: bool = False) -> tuple[str, Any]:
    with pytest.raises(RequestError) as info:
        check_request(obj, oob_enabled=oob)
    return info.value.error.desc, info.value.id


def test_valid_request() -> None:
    req = check_request(
        {"execute": "job-pause", "arguments": {"id": "j"}, "id": 0}, oob_enabled=False
    )
    assert (req.command, req.arguments, req.id, req.oob) == ("job-pause", {"id": "j"}, 0, False)
    req = check_request({"execute": "quit"}, oob_enabled=False)
    assert req.arguments == {} and req.id is NO_ID


@pytest.mark.parametrize(
    "obj, desc, req_id",
    [
        ([], "QMP input must be a JSON object", NO_ID),
        (3, "QMP input must be a JSON object", NO_ID),
        ({"id": 5}, "QMP input lacks member 'execute'", 5),
        ({}, "QMP input lacks member 'execute'", NO_ID),
        ({"execute": 1, "id": None}, "QMP input member 'execute' must be a string", None),
        (
            {"execute": "x", "arguments": []},
            "QMP input member 'arguments' must be an object",
            NO_ID,
        ),
        (
            {"execute": "x", "arguments": None},
            "QMP input member 'arguments' must be an object",
            NO_ID,
        ),
        ({"exec-oob": "query-jobs", "id": 4}, "QMP input member 'exec-oob' is unexpected", 4),
        (
            {"execute": "x", "control": 1, "foo": 2},
            "QMP input member 'control' is unexpected",
            NO_ID,
        ),
        (
            {"foo": 2, "control": 1, "execute": "x"},
            "QMP input member 'control' is unexpected",
            NO_ID,
        ),
    ],
)
def test_envelope_errors(obj: object, desc: str, req_id: Any) -> None:
    assert _error(obj) == (desc, req_id)


def test_exec_oob_when_enabled() -> None:
    req = check_request({"exec-oob": "query-jobs"}, oob_enabled=True)
    assert req.oob and req.command == "query-jobs"
    desc, _ = _error({"exec-oob": "a", "execute": "b"}, oob=True)
    # exec-oob (bucket 162) comes before execute (bucket 299) in QEMU's order.
    assert desc == "QMP input member 'execute' clashes with 'exec-oob'"


@pytest.mark.parametrize("req_id", [0, False, None, "", [1, "a"], {"a": {}}, 0.5])
def test_any_id_is_echoed(req_id: Any) -> None:
    assert protocol.reply({}, req_id) == {"return": {}, "id": req_id}
    err = QMPError("boom")
    assert protocol.error_reply(err, req_id) == {
        "id": req_id,
        "error": {"class": "GenericError", "desc": "boom"},
    }
    assert list(protocol.error_reply(err, req_id)) == ["id", "error"]
    assert list(protocol.reply({}, req_id)) == ["return", "id"]


def test_no_id_no_member() -> None:
    assert protocol.reply([], NO_ID) == {"return": []}
    assert protocol.error_reply(QMPError("x", ErrorClass.DEVICE_NOT_ACTIVE)) == {
        "error": {"class": "DeviceNotActive", "desc": "x"}
    }


def test_event_message() -> None:
    event = Event("JOB_STATUS_CHANGE", {"status": "null", "id": "j"}, (17, 42), 1)
    assert protocol.event_message(event) == {
        "timestamp": {"seconds": 17, "microseconds": 42},
        "event": "JOB_STATUS_CHANGE",
        "data": {"status": "null", "id": "j"},
    }


def test_greeting() -> None:
    assert protocol.greeting() == {
        "QMP": {
            "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmpjobd 0.1.0"},
            "capabilities": ["oob"],
        }
    }


# Which unexpected argument QEMU names, recorded live from query-jobs.
@pytest.mark.parametrize(
    "members, named",
    [
        (["a", "b"], "b"),
        (["b", "a"], "b"),
        (["x", "y"], "y"),
        (["y", "x"], "y"),
        (["zz", "foo"], "zz"),
    ],
)
def test_first_unexpected_matches_qemu(members: list[str], named: str) -> None:
    assert first_unexpected(members, members) == named


def test_qdict_order_is_by_bucket_newest_first() -> None:
    assert qdict_order(["execute", "control"]) == ["control", "execute"]
    assert sorted(qdict_order(["a", "b", "c"])) == ["a", "b", "c"]
    assert ghash_order([]) == []


_members = st.dictionaries(
    st.sampled_from(["execute", "arguments", "id", "exec-oob", "control", "x"]),
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=3)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
    | st.lists(st.integers(), max_size=2),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(obj=_members, oob=st.booleans())
def test_fast_path_agrees_with_the_ordered_check(obj: dict[str, Any], oob: bool) -> None:
    def outcome(check: Any) -> object:
        try:
            return check()
        except RequestError as exc:
            return (exc.error.desc, exc.id)

    req_id = obj.get("id", NO_ID)
    if isinstance(req_id, dict | list):
        req_id = qemu_order(req_id)
    fast = outcome(lambda: check_request(obj, oob_enabled=oob))
    slow = outcome(lambda: _check_in_qemu_order(obj, req_id, oob_enabled=oob))
    assert fast == slow


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("JOB_STATUS_CHANGE", {"status": "running", "id": "job0"}),
        ("BLOCK_JOB_COMPLETED", {"device": "j", "len": 0, "offset": 0, "speed": 0, "type": "x"}),
        ("X", {"f": 0.1, "e": 1e16, "s": "\u00e9\U0001f600 1.5", "l": [None, True]}),
        ("lower_case", {}),
        ('QUO"TE', {"a": 1}),
    ],
)
def test_event_line_is_the_encoded_event_message(name: str, data: dict[str, object]) -> None:
    for stamp in ((1_700_000_000, 0), (0, 999_999)):
        event = Event(name, data, stamp, 1)
        assert protocol.event_line(event) == wire.encode(protocol.event_message(event))
