"""Differential tests: qmpjobd against QEMU's qemu-storage-daemon, once per
emulated release (7.2, 10.0).

* Every golden transcript (recorded from qemu-storage-daemon by
  ``python -m tests.differential.record [--profile RELEASE]``) is replayed
  against ``qmpjobd --qemu-version RELEASE``; a release without a transcript
  of its own uses the shared one.
* When a release's qemu-storage-daemon is there (see
  :func:`tests.differential.harness.qemu_binary`), every scenario also runs
  live against it, and the live transcript is compared with qmpjobd's and
  with the golden file (a drift in the golden files shows there).

Job scenarios run on qmpjobd like every other: a job command missing from
qmpjobd fails them (and ``test_qmpjobd_lists_the_job_commands`` says so
plainly), it never skips them.  A scenario with an
``xfail_reason`` describes a known qmpjobd difference: its qmpjobd tests are
strict xfails, so fixing the daemon shows up as an XPASS to clear.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from qmpjobd.profile import PROFILES
from tests.differential import harness, normalise, scenarios
from tests.differential.model import (
    GROUP_JOBS,
    UNSET,
    EventPattern,
    Expect,
    Scenario,
    Step,
    bytes_to_text,
    strict_equal,
    text_to_bytes,
)

#: Every release the suite covers, and its live qemu-storage-daemon (or None).
LIVE = {profile: harness.qemu_binary(profile) for profile in harness.LIVE_PROFILES}
#: The releases qmpjobd emulates, of those.
QMPJOBD_PROFILES = [p for p in harness.LIVE_PROFILES if p in PROFILES]

#: (release, scenario) for every scenario with a transcript for that release.
CASES = [(p, n) for p in harness.LIVE_PROFILES for n in harness.golden_names(profile=p)]
#: Every golden file: (release it was recorded from, scenario).
FILES = [(harness.BASE_PROFILE, n) for n in harness.golden_names()] + [
    (p, path.stem)
    for p in harness.LIVE_PROFILES
    if p != harness.BASE_PROFILE
    for path in sorted((harness.GOLDEN_DIR / p).glob("*.json"))
]
NAMES = sorted({n for _, n in CASES})


def _case(profile: str, name: str, *, xfail: bool = False, live: bool = False) -> Any:
    """A (release, scenario) parameter; a known qmpjobd difference on that
    release (``xfail_reason``) makes a qmpjobd test a strict xfail."""
    marks: list[Any] = []
    if live and LIVE[profile] is None:
        marks.append(pytest.mark.skip(reason=f"qemu-storage-daemon {profile} not installed"))
    scenario = scenarios.BY_NAME.get(name)
    if xfail and scenario is not None and scenario.xfails_on(profile):
        marks.append(pytest.mark.xfail(strict=True, reason=f"qmpjobd bug: {scenario.xfail_reason}"))
    return pytest.param(profile, name, marks=marks, id=f"{name}-{profile}")


QMPJOBD_CASES = [_case(p, n, xfail=True) for p, n in CASES if p in QMPJOBD_PROFILES]
LIVE_CASES = [_case(p, n, live=True) for p, n in CASES]
LIVE_QMPJOBD_CASES = [_case(p, n, xfail=True, live=True) for p, n in CASES if p in QMPJOBD_PROFILES]


@functools.cache
def golden(name: str, profile: str = harness.BASE_PROFILE) -> dict[str, Any]:
    return harness.load_golden(name, profile=profile)


def _run_on_qemu(name: str, profile: str) -> dict[str, Any]:
    return harness.run_on_qemu(scenarios.BY_NAME[name], LIVE[profile])


@functools.cache
def qemu_run(name: str, profile: str) -> dict[str, Any]:
    return _run_on_qemu(name, profile)


def _replay_on_qmpjobd(name: str, profile: str = harness.BASE_PROFILE) -> dict[str, Any]:
    # Replays the golden file's own steps, so a golden file stands on its own.
    return harness.run_on_qmpjobd(Scenario.from_json(golden(name, profile)), profile=profile)


# Replays started ahead of their tests (see _prefetch_qmpjobd_runs).
_prefetched: dict[tuple[str, str], Future[dict[str, Any]]] = {}
PREFETCH_WORKERS = 3
QMPJOBD_TESTS = frozenset({"test_qmpjobd_matches_golden", "test_qmpjobd_matches_live_qemu"})


@pytest.fixture(scope="session", autouse=True)
def _prefetch_qmpjobd_runs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Replay the selected scenarios on qmpjobd a few at a time in the background.

    A replay spends most of its time starting the daemon and waiting on
    sockets, so a few in parallel keep the file fast; each still gets a
    daemon of its own, and the tests compare the results in their order.
    """
    cases = sorted(
        {
            (item.callspec.params["name"], item.callspec.params["profile"])
            for item in request.session.items
            if getattr(item, "originalname", None) in QMPJOBD_TESTS and hasattr(item, "callspec")
        }
    )
    with ThreadPoolExecutor(PREFETCH_WORKERS) as pool:
        for case in cases:
            _prefetched[case] = pool.submit(_replay_on_qmpjobd, *case)
        yield
        for future in _prefetched.values():
            future.cancel()
        _prefetched.clear()


@functools.cache
def qmpjobd_run(name: str, profile: str = harness.BASE_PROFILE) -> dict[str, Any]:
    future = _prefetched.get((name, profile))
    return future.result() if future is not None else _replay_on_qmpjobd(name, profile)


@functools.cache
def qmpjobd_commands(profile: str = harness.BASE_PROFILE) -> frozenset[str]:
    probe = Scenario(
        "probe",
        "which commands qmpjobd has",
        (
            scenarios.connect(),
            scenarios.negotiate(),
            scenarios.send(scenarios.cmd("query-commands", id="c")),
        ),
    )
    received = harness.run_on_qmpjobd(probe, profile=profile)["steps"][-1]["received"]["0"]
    ret = received[0].get("return") if received else None
    if not isinstance(ret, list):
        return frozenset()
    return frozenset(c["name"] for c in ret if isinstance(c, dict) and "name" in c)


def assert_same(expected: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    problems = normalise.compare(expected, actual) + normalise.check_same_events(actual)
    assert not problems, f"{what}:\n" + "\n".join(problems)


#: A live run that differs is run again this many times before the test fails.
#: Both daemons run real timers on a shared machine; a step that times out
#: under load is not a behaviour difference, while a real one repeats.
RERUNS = 2


def assert_same_with_reruns(
    expected: dict[str, Any],
    actual: dict[str, Any],
    what: str,
    rerun_expected: Any = None,
    rerun_actual: Any = None,
) -> None:
    for _ in range(RERUNS):
        problems = normalise.compare(expected, actual) + normalise.check_same_events(actual)
        if not problems:
            return
        if rerun_expected is not None:
            expected = rerun_expected()
        if rerun_actual is not None:
            actual = rerun_actual()
    assert_same(expected, actual, what)


# ------------------------------------------------------------------ golden files


def test_golden_files_exist() -> None:
    assert len(NAMES) >= 40
    for profile in harness.LIVE_PROFILES:
        have = {n for p, n in CASES if p == profile}
        wanted = {s.name for s in scenarios.ALL if s.applies_to(profile)}
        missing = sorted(wanted - have)
        assert not missing, (
            f"scenarios without a golden file for {profile} "
            f"(run the recorder with --profile {profile}): {missing}"
        )


@pytest.mark.parametrize(("profile", "name"), FILES, ids=[f"{n}-{p}" for p, n in FILES])
def test_golden_matches_scenario(profile: str, name: str) -> None:
    """The golden file was recorded from the current scenario definition."""
    assert name in scenarios.BY_NAME, f"golden file {name}.json has no scenario"
    data = harness.load_golden(name, profile=profile)
    recorded = Scenario.from_json(data).to_json()
    assert recorded == scenarios.BY_NAME[name].to_json(), "scenario changed: re-record it"
    assert scenarios.BY_NAME[name].applies_to(profile)
    assert not any(s.get("timed_out") for s in data["steps"])
    assert not normalise.check_same_events(data)


# ------------------------------------------------------------------ qmpjobd


@pytest.mark.parametrize(("profile", "name"), QMPJOBD_CASES)
def test_qmpjobd_matches_golden(profile: str, name: str) -> None:
    assert_same_with_reruns(
        golden(name, profile),
        qmpjobd_run(name, profile),
        f"qmpjobd --qemu-version {profile} differs from the golden transcript",
        rerun_actual=lambda: _replay_on_qmpjobd(name, profile),
    )


def test_qmpjobd_lists_the_job_commands() -> None:
    """The job scenarios' commands are all there (the scenarios would fail too,
    less plainly)."""
    for profile in QMPJOBD_PROFILES:
        used: set[str] = set()
        absent: set[str] = set()
        for p, name in CASES:
            if p != profile or golden(name, profile)["group"] != GROUP_JOBS:
                continue
            transcript = golden(name, profile)
            used |= _executed(transcript)
            absent |= _not_found(transcript)
        assert "blockdev-backup" in used
        missing = sorted(used - absent - qmpjobd_commands(profile))
        assert not missing, f"{profile} job commands missing from query-commands: {missing}"


def _not_found(transcript: dict[str, Any]) -> set[str]:
    """The commands the recorded daemon answered CommandNotFound."""
    out = set()
    for step in transcript["steps"]:
        for messages in step["received"].values():
            for m in messages:
                desc = m.get("error", {}).get("desc", "") if isinstance(m, dict) else ""
                if desc.startswith("The command ") and desc.endswith(" has not been found"):
                    out.add(desc[len("The command ") : -len(" has not been found")])
    return out


def _executed(transcript: dict[str, Any]) -> set[str]:
    """The ``execute`` names of the well-formed requests a transcript sends."""
    out = set()
    decoder = json.JSONDecoder()
    for step in transcript["steps"]:
        text = b"".join(Step.from_json(step).chunks).decode("utf-8", "replace")
        pos = 0
        while pos < len(text):
            try:
                request, pos = decoder.raw_decode(text, pos)
            except ValueError:
                break
            if isinstance(request, dict) and isinstance(request.get("execute"), str):
                out.add(request["execute"])
            while pos < len(text) and text[pos].isspace():
                pos += 1
    return out


# ------------------------------------------------------------------ live QEMU


@pytest.mark.qemu
@pytest.mark.parametrize(("profile", "name"), LIVE_CASES)
def test_qemu_matches_golden(profile: str, name: str) -> None:
    assert_same_with_reruns(
        golden(name, profile),
        qemu_run(name, profile),
        f"live qemu-storage-daemon {profile} differs from the golden file",
        rerun_actual=lambda: _run_on_qemu(name, profile),
    )


@pytest.mark.qemu
@pytest.mark.parametrize(("profile", "name"), LIVE_QMPJOBD_CASES)
def test_qmpjobd_matches_live_qemu(profile: str, name: str) -> None:
    assert_same_with_reruns(
        qemu_run(name, profile),
        qmpjobd_run(name, profile),
        f"qmpjobd --qemu-version {profile} differs from live qemu-storage-daemon {profile}",
        rerun_expected=lambda: _run_on_qemu(name, profile),
        rerun_actual=lambda: _replay_on_qmpjobd(name, profile),
    )


# ------------------------------------------------------------------ the machinery itself


def test_strict_equal_keeps_json_types_apart() -> None:
    assert strict_equal({"a": [1, None], "b": "x"}, {"b": "x", "a": [1, None]})
    assert not strict_equal(0, False)
    assert not strict_equal(1, True)
    assert not strict_equal(1, 1.0)
    assert not strict_equal([1, 2], [2, 1])
    assert not strict_equal({"a": 1}, {"a": 1, "b": 2})


def test_raw_bytes_round_trip_through_json() -> None:
    raw = b'{"id": "\xff\xc0\xaf caf\xc3\xa9"}\x01\r\n'
    assert text_to_bytes(bytes_to_text(raw)) == raw
    step = Step(0, "send", (raw, b"x"), {0: Expect(reply_id=None, quiet_ms=5)}, gap_ms=3)
    assert Step.from_json(step.to_json()) == step
    assert Expect.from_json(Expect().to_json()).reply_id is UNSET
    assert Expect.from_json(Expect(reply_id=None).to_json()).reply_id is None


def test_normaliser_replaces_only_what_it_should() -> None:
    greeting = {
        "QMP": {
            "version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "distro"},
            "capabilities": ["oob"],
        }
    }
    assert normalise.normalise_message(greeting) == {
        "QMP": {
            "version": {
                "qemu": {"micro": "<micro>", "minor": 2, "major": 7},
                "package": "<package>",
            },
            "capabilities": ["oob"],
        }
    }
    event = {
        "timestamp": {"seconds": 5, "microseconds": 6},
        "event": "BLOCK_JOB_COMPLETED",
        "data": {"device": "j", "len": 10, "offset": 10, "speed": 0, "type": "backup"},
    }
    assert normalise.normalise_message(event)["data"]["len"] == 10
    out = normalise.normalise_message(event, progress=True)
    assert out["timestamp"] == "<timestamp>"
    assert out["data"] == {
        "device": "j",
        "len": "<progress>",
        "offset": "<progress>",
        "speed": 0,
        "type": "backup",
    }
    bad_ts = {**event, "timestamp": {"seconds": 1.5, "microseconds": 0}}
    assert normalise.normalise_message(bad_ts)["timestamp"] == bad_ts["timestamp"]
    commands = {"return": [{"name": "a"}, {"name": "b"}], "id": 1}
    assert (
        normalise.normalise_message(commands, shape=("commands",))["return"] == "<list of {name}>"
    )
    assert normalise.normalise_message(commands)["return"] == commands["return"]
    odd = {"return": [{"name": "a", "x": 1}]}
    assert normalise.normalise_message(odd, shape=("commands",)) == odd


def _transcript(group: str, received: list[dict[str, Any]]) -> dict[str, Any]:
    scenario = Scenario(
        "t",
        "t",
        (Step(0, "send", (b"{}",), {0: Expect(messages=len(received))}),),
        group=group,
    )
    out = scenario.to_json()
    out["steps"] = [{**out["steps"][0], "received": {"0": received}}]
    out["trailing"] = {"0": []}
    return out


def test_compare_job_scenarios_split_events_and_replies() -> None:
    ev = {
        "event": "JOB_STATUS_CHANGE",
        "data": {"status": "null", "id": "j"},
        "timestamp": {"seconds": 1, "microseconds": 2},
    }
    rep = {"return": {}, "id": 1}
    assert (
        normalise.compare(_transcript(GROUP_JOBS, [ev, rep]), _transcript(GROUP_JOBS, [rep, ev]))
        == []
    )
    problems = normalise.compare(
        _transcript("protocol", [ev, rep]), _transcript("protocol", [rep, ev])
    )
    assert problems and "message 0" in problems[0]
    short = normalise.compare(_transcript("protocol", [rep, rep]), _transcript("protocol", [rep]))
    assert any("2 messages expected, 1 received; missing" in p for p in short)


def test_event_pattern_is_a_subset_match() -> None:
    pattern = EventPattern("JOB_STATUS_CHANGE", {"status": "null"})
    assert pattern.matches({"event": "JOB_STATUS_CHANGE", "data": {"status": "null", "id": "j"}})
    assert not pattern.matches(
        {"event": "JOB_STATUS_CHANGE", "data": {"status": "pending", "id": "j"}}
    )
    assert not pattern.matches({"event": "BLOCK_JOB_PENDING", "data": {"status": "null"}})
