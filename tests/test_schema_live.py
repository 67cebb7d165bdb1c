"""query-qmp-schema of each profile against its live qemu-storage-daemon.

Type names are numbers that differ between the two, so every command and
event is expanded structurally (members in order, optionality, types, enum
values, union variants, feature flags at every level) and the two
expansions are compared. The comparison is restricted to what qmpjobd has:
a command or event qmpjobd lacks is left out, and within one, optional
members, enum values and union branches qmpjobd leaves out (drivers and
transaction actions it does not implement; the variants of a union qmpjobd
shows by its common members) are dropped from the live side first, inside
an alternate's branches too (a BlockdevRef's options as blockdev-add's).
Everything qmpjobd does show must then be exactly QEMU's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from tests.differential import harness

Schema = dict[str, dict[str, Any]]


def _fetch(argv: list[str]) -> Schema:
    with tempfile.TemporaryDirectory(prefix="qmps-") as tmp:
        sock = os.path.join(tmp, "s")
        full = [a.replace("{sock}", sock) for a in argv]
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(10)
            deadline = time.monotonic() + 10
            while True:
                try:
                    conn.connect(sock)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            f = conn.makefile("rwb")
            f.readline()
            for request in (b'{"execute": "qmp_capabilities"}', b'{"execute": "query-qmp-schema"}'):
                f.write(request + b"\n")
                f.flush()
                reply = json.loads(f.readline())
            conn.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return {e["name"]: e for e in reply["return"]}


def live_schema(profile: str) -> Schema:
    binary = harness.qemu_binary(profile)
    assert binary is not None
    return _fetch([binary, "--chardev", "socket,id=m,path={sock},server=on,wait=off",
                   "--monitor", "chardev=m"])  # fmt: skip


def qmpjobd_schema(profile: str) -> Schema:
    return _fetch([sys.executable, "-m", "qmpjobd", "--socket", "{sock}",
                   "--qemu-version", profile])  # fmt: skip


def expand(schema: Schema, name: str, seen: tuple[str, ...] = ()) -> Any:
    """An entity with every type name replaced by the type itself."""
    entity = schema[name]
    meta = entity["meta-type"]
    if meta == "builtin":
        return name
    if name in seen:
        return {"<recursive>": seen.index(name)}
    seen = (*seen, name)
    if meta == "enum":
        out: dict[str, Any] = {"<enum>": [m["name"] for m in entity["members"]]}
        features = {m["name"]: m["features"] for m in entity["members"] if m.get("features")}
        if features:
            out["<member-features>"] = features
        return out
    if meta == "array":
        return [expand(schema, entity["element-type"], seen)]
    if meta == "alternate":
        return {"<alternate>": [expand(schema, m["type"], seen) for m in entity["members"]]}
    if meta == "object":
        out = {}
        for m in entity["members"]:
            value = {"type": expand(schema, m["type"], seen), "optional": "default" in m}
            if m.get("features"):
                value["features"] = m["features"]
            out[m["name"]] = value
        if "variants" in entity:
            out["<tag>"] = entity["tag"]
            out["<variants>"] = {
                v["case"]: expand(schema, v["type"], seen) for v in entity["variants"]
            }
        if entity.get("features"):
            out["<features>"] = entity["features"]
        return out
    out = {"arg": expand(schema, entity["arg-type"], seen)}
    if "ret-type" in entity:
        out["ret"] = expand(schema, entity["ret-type"], seen)
    for key in ("features", "allow-oob"):
        if key in entity:
            out[key] = entity[key]
    return out


def restrict(live: Any, ours: Any) -> Any:
    """``live`` without what ``ours`` leaves out (see the module docstring)."""
    if isinstance(live, list) and isinstance(ours, list) and len(live) == len(ours) == 1:
        return [restrict(live[0], ours[0])]
    if not (isinstance(live, dict) and isinstance(ours, dict)):
        return live
    if "<enum>" in live and "<enum>" in ours:
        values = [v for v in live["<enum>"] if v in ours["<enum>"]]
        out: dict[str, Any] = {"<enum>": values}
        features = {
            k: v for k, v in live.get("<member-features>", {}).items() if k in ours["<enum>"]
        }
        if features:
            out["<member-features>"] = features
        return out
    if "<recursive>" in live:
        return live
    if "<alternate>" in live:
        # Branch by branch: a BlockdevRef's options are restricted as blockdev-add's are.
        branches = ours.get("<alternate>", [])
        if len(branches) != len(live["<alternate>"]):
            return live
        return {
            "<alternate>": [
                restrict(t, m) for t, m in zip(live["<alternate>"], branches, strict=True)
            ]
        }
    out = {}
    for key, value in live.items():
        if key in ("<tag>", "<variants>") and "<variants>" not in ours:
            continue  # a union qmpjobd shows as its common members only
        if key == "<variants>":
            theirs = ours.get("<variants>", {})
            out[key] = {c: restrict(t, theirs[c]) for c, t in value.items() if c in theirs}
        elif key.startswith("<") or key in ("features", "allow-oob"):
            out[key] = value
        elif key in ours:
            if isinstance(value, dict) and "type" in value and isinstance(ours[key], dict):
                out[key] = {**value, "type": restrict(value["type"], ours[key].get("type"))}
            else:
                out[key] = restrict(value, ours[key])
        elif not (isinstance(value, dict) and value.get("optional")):
            out[key] = value  # a mandatory member qmpjobd lacks: a difference
    return out


PROFILES = [
    pytest.param(
        p,
        marks=pytest.mark.skipif(
            harness.qemu_binary(p) is None, reason=f"qemu-storage-daemon {p} not installed"
        ),
    )
    for p in harness.LIVE_PROFILES
]


@pytest.mark.qemu
@pytest.mark.parametrize("profile", PROFILES)
def test_schema_is_the_live_daemons(profile: str) -> None:
    live, ours = live_schema(profile), qmpjobd_schema(profile)
    # qmpjobd's own extensions (x-qmpjobd-*) exist in no QEMU.
    entities = sorted(
        n
        for n, e in ours.items()
        if e["meta-type"] in ("command", "event") and not n.startswith("x-qmpjobd-")
    )
    assert "blockdev-backup" in entities
    missing = [n for n in entities if n not in live]
    assert not missing, f"qmpjobd {profile} has what QEMU {profile} lacks: {missing}"
    problems = []
    for name in entities:
        mine = expand(ours, name)
        theirs = restrict(expand(live, name), mine)
        if theirs != mine:
            problems.append(
                f"{name}:\n  QEMU    {json.dumps(theirs)[:600]}\n  qmpjobd {json.dumps(mine)[:600]}"
            )
    assert not problems, "\n".join(problems)
