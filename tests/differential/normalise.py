"""Normalise transcripts and compare them.

What is replaced before comparing (and nothing else):

* event ``timestamp`` objects (checked to be ``{seconds: int, microseconds: int}``);
* in any QEMU version object (the greeting, ``query-version``): ``micro`` and
  ``package``, since qmpjobd reports 7.2.0 and its own package string;
* job progress numbers (``offset``, ``len``, ``current-progress``,
  ``total-progress``), only in scenarios with ``progress`` set;
* an image's ``actual-size``, rounded down to 64 KiB units (a file just
  written may count a 4 KiB page more or less, by write-back timing);
* generated node names (``#block`` and digits: QEMU's process-wide counter
  and two random digits) become ``#block<n>``, numbered in the order they
  first appear in the transcript, so a name keeps its identity across
  messages;
* per step, ``shape`` normalisations: ``"commands"`` turns a ``return`` that is
  a non-empty list of ``{"name": str}`` into a marker.

Messages are compared as parsed JSON with :func:`strict_equal`.  Protocol
scenarios compare the messages of every step on every connection in order;
job scenarios compare, per connection, the sequence of events and the
sequence of other messages separately (QEMU may send job events before or
after a command's reply).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .model import GROUP_JOBS, JSON, Scenario, is_event, strict_equal

PROGRESS_KEYS = frozenset({"offset", "len", "current-progress", "total-progress"})
TIMESTAMP = "<timestamp>"
MICRO = "<micro>"
PACKAGE = "<package>"
PROGRESS = "<progress>"
COMMAND_LIST = "<list of {name}>"
#: An image's ``actual-size`` (the file's allocated blocks) is compared in
#: whole 64 KiB units: right after a job wrote a file, qmpjobd's count was
#: seen one 4 KiB page above QEMU's under load only, while the files ended
#: with the same extents (ext4 counts blocks of dirty pages it has not yet
#: placed).
ACTUAL_SIZE_UNIT = 64 * 1024


def _is_version(obj: Mapping[str, JSON]) -> bool:
    qemu = obj.get("qemu")
    return (
        set(obj) == {"qemu", "package"}
        and isinstance(qemu, dict)
        and set(qemu) == {"micro", "minor", "major"}
    )


def _walk(value: JSON, progress: bool) -> JSON:
    if isinstance(value, list):
        return [_walk(v, progress) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _walk(v, progress) for k, v in value.items()}
    if _is_version(out):
        qemu = dict(out["qemu"])
        if type(qemu["micro"]) is int:
            qemu["micro"] = MICRO
        out["qemu"] = qemu
        if isinstance(out["package"], str):
            out["package"] = PACKAGE
    if progress:
        for k in PROGRESS_KEYS & out.keys():
            if type(out[k]) is int:
                out[k] = PROGRESS
    size = out.get("actual-size")
    if type(size) is int and "virtual-size" in out:
        out["actual-size"] = f"<{size // ACTUAL_SIZE_UNIT} x 64 KiB>"
    return out


def _is_timestamp(ts: JSON) -> bool:
    return (
        isinstance(ts, dict)
        and set(ts) == {"seconds", "microseconds"}
        and all(type(v) is int for v in ts.values())
    )


def _is_command_list(ret: JSON) -> bool:
    return (
        isinstance(ret, list)
        and bool(ret)
        and all(
            isinstance(c, dict) and set(c) == {"name"} and isinstance(c["name"], str) for c in ret
        )
    )


def normalise_message(
    message: JSON, *, progress: bool = False, shape: tuple[str, ...] = ()
) -> JSON:
    if not isinstance(message, dict):
        return message
    out = _walk(message, progress)
    if "event" in out and _is_timestamp(out.get("timestamp")):
        out["timestamp"] = TIMESTAMP
    if "commands" in shape and _is_command_list(out.get("return")):
        out["return"] = COMMAND_LIST
    return out


_IMPLICIT_NAME = re.compile(r"#block[0-9]+")


def _rename_implicit(value: JSON, names: dict[str, str]) -> JSON:
    """Generated node names as ``#block<n>``, ``n`` their order of first appearance."""
    if isinstance(value, str):
        if "#block" not in value:
            return value
        return _IMPLICIT_NAME.sub(
            lambda m: names.setdefault(m.group(0), f"#block<{len(names)}>"), value
        )
    if isinstance(value, list):
        return [_rename_implicit(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _rename_implicit(v, names) for k, v in value.items()}
    return value


def normalise(transcript: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The transcript's steps with every received message normalised."""
    progress = bool(transcript.get("progress", False))
    steps: list[dict[str, Any]] = []
    for step in transcript["steps"]:
        shape = tuple(step.get("shape", ()))
        received = {
            k: [normalise_message(m, progress=progress, shape=shape) for m in msgs]
            for k, msgs in step["received"].items()
        }
        steps.append({**step, "received": received})
    trailing = {
        k: [normalise_message(m, progress=progress) for m in msgs]
        for k, msgs in transcript.get("trailing", {}).items()
    }
    steps.append({"action": "(after the last step)", "conn": None, "received": trailing})
    names: dict[str, str] = {}
    for step in steps:
        step["received"] = {
            k: [_rename_implicit(m, names) for m in msgs] for k, msgs in step["received"].items()
        }
    return steps


def _stream(steps: list[dict[str, Any]], conn: str) -> list[JSON]:
    return [m for s in steps for m in s["received"].get(conn, [])]


def _fmt(value: JSON) -> str:
    return json.dumps(value, ensure_ascii=True)


def _diff_lists(label: str, expected: list[JSON], actual: list[JSON]) -> list[str]:
    problems = []
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if not strict_equal(e, a):
            problems.append(f"{label}, message {i}:\n  expected {_fmt(e)}\n  actual   {_fmt(a)}")
            break
    if len(expected) != len(actual):
        n = min(len(expected), len(actual))
        extra = expected[n:] if len(expected) > n else actual[n:]
        which = "missing" if len(expected) > n else "unexpected"
        shown = "\n  ".join(_fmt(m) for m in extra[:5])
        more = f"\n  ... and {len(extra) - 5} more" if len(extra) > 5 else ""
        problems.append(
            f"{label}: {len(expected)} messages expected, {len(actual)} received; "
            f"{which}:\n  {shown}{more}"
        )
    return problems


def compare(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Differences between two transcripts of the same scenario (empty if equal)."""
    scenario = Scenario.from_json(expected)
    exp, act = normalise(expected), normalise(actual)
    problems: list[str] = []
    for i, sa in enumerate(act):
        if sa.get("error"):
            problems.append(f"step {i}: {sa['error']}")
        if sa.get("timed_out"):
            problems.append(f"step {i}: timed out waiting on connection(s) {sa['timed_out']}")
    if len(exp) != len(act):
        problems.append(f"the run stopped after step {len(act) - 2} of {len(exp) - 1}")
        # Compare what was run; the trailing messages belong to the last step run.
        exp = [*exp[: len(act) - 1], exp[-1]]
    for k in range(scenario.connections):
        c = str(k)
        if scenario.group == GROUP_JOBS:
            ev_e = [m for m in _stream(exp, c) if is_event(m)]
            ev_a = [m for m in _stream(act, c) if is_event(m)]
            problems += _diff_lists(f"connection {k}, events", ev_e, ev_a)
            rp_e = [m for m in _stream(exp, c) if not is_event(m)]
            rp_a = [m for m in _stream(act, c) if not is_event(m)]
            problems += _diff_lists(f"connection {k}, replies", rp_e, rp_a)
            continue
        for i, (se, sa) in enumerate(zip(exp, act, strict=True)):
            label = (
                f"step {i} ({se['action']} on {se['conn']})"
                if se["conn"] is not None
                else se["action"]
            )
            problems += _diff_lists(
                f"connection {k}, {label}",
                se["received"].get(c, []),
                sa["received"].get(c, []),
            )
    for i, (se, sa) in enumerate(zip(exp, act, strict=True)):
        if se.get("eof", []) != sa.get("eof", []):
            problems.append(
                f"step {i}: EOF on {se.get('eof', [])} expected, got {sa.get('eof', [])}"
            )
    return problems


def check_same_events(transcript: Mapping[str, Any]) -> list[str]:
    """For ``same_events`` scenarios: those connections saw identical events."""
    conns = [str(c) for c in transcript.get("same_events", ())]
    steps = normalise(transcript)
    problems: list[str] = []
    if len(conns) < 2:
        return problems
    first = [m for m in _stream(steps, conns[0]) if is_event(m)]
    for c in conns[1:]:
        other = [m for m in _stream(steps, c) if is_event(m)]
        problems += _diff_lists(f"events on {conns[0]} vs {c}", first, other)
    return problems
