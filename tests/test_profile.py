"""Version profiles: what a chosen QEMU release changes, handed down from app.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qmpjobd import profile as profiles
from qmpjobd.app import App, Config
from qmpjobd.jobs import QEMU_7_2_TABLES, QEMU_10_0_TABLES
from qmpjobd.profile import DEFAULT_PROFILE, PROFILES, QEMU_7_2, QEMU_10_0, Profile

from .conftest import RawClient


def test_the_default_is_the_newest_profile() -> None:
    # The newest release the differential suite proves against its live daemon.
    assert DEFAULT_PROFILE == "10.0"


def test_the_7_2_profile_is_todays_behaviour() -> None:
    assert PROFILES == {"7.2": QEMU_7_2, "10.0": QEMU_10_0}
    assert QEMU_7_2.qemu_version == (7, 2, 0)
    assert QEMU_7_2.release == "7.2.0"
    assert QEMU_7_2.job_tables is QEMU_7_2_TABLES
    assert QEMU_7_2.commands is None and QEMU_7_2.schema_overlay is None
    assert QEMU_7_2.exclude == {"block-job-change", "blockdev-set-active"}
    assert not any(
        (
            QEMU_7_2.mirror_actively_synced,
            QEMU_7_2.node_active,
            QEMU_7_2.protocol_format_specific,
            QEMU_7_2.txn_start_reversed,
            QEMU_7_2.txn_grouped_checked_first,
            QEMU_7_2.drain_all_on_graph_change,
        )
    )


def test_the_10_0_profile() -> None:
    assert QEMU_10_0.release == "10.0.0"
    assert QEMU_10_0.job_tables is QEMU_10_0_TABLES
    assert QEMU_10_0.schema_overlay == "10.0" and not QEMU_10_0.exclude
    assert all(
        (
            QEMU_10_0.mirror_actively_synced,
            QEMU_10_0.node_active,
            QEMU_10_0.protocol_format_specific,
            QEMU_10_0.txn_start_reversed,
            QEMU_10_0.txn_grouped_checked_first,
            QEMU_10_0.drain_all_on_graph_change,
        )
    )


@pytest.fixture
async def other_release(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    """A daemon on a made-up profile: another release, fewer commands."""
    test = Profile(
        name="9.9",
        qemu_version=(9, 9, 0),
        job_tables=QEMU_7_2_TABLES,
        commands=frozenset(
            {"qmp_capabilities", "query-version", "query-commands", "query-jobs", "quit"}
        ),
    )
    monkeypatch.setitem(profiles.PROFILES, "9.9", test)
    app = App(Config(sockets=[sock_dir / "qmp.sock"], qemu_version="9.9"))
    await app.start()
    try:
        yield app
    finally:
        await app.shutdown()


async def test_a_profile_sets_the_release_and_the_command_set(other_release: App) -> None:
    client = await RawClient.connect(Path(other_release.config.sockets[0]), negotiate=False)
    try:
        greeting = client.greeting
        assert greeting is not None
        assert greeting["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 9, "major": 9}
        assert await client.execute("qmp_capabilities") == {"return": {}}
        version = await client.execute("query-version")
        assert version["return"]["qemu"] == {"micro": 0, "minor": 9, "major": 9}
        names = {c["name"] for c in (await client.execute("query-commands"))["return"]}
        # The x-qmpjobd-* extensions are there whatever the release.
        names = {name for name in names if not name.startswith("x-qmpjobd-")}
        assert names == {
            "query-version",
            "query-commands",
            "query-jobs",
            "quit",
            "qmp_capabilities",
        }
        assert await client.execute("blockdev-add", {"driver": "null-co"}) == {
            "error": {
                "class": "CommandNotFound",
                "desc": "The command blockdev-add has not been found",
            }
        }
    finally:
        await client.close()


async def test_7_2_greets_as_7_2(sock: Path) -> None:
    client = await RawClient.connect(sock, negotiate=False)
    try:
        greeting = client.greeting
        assert greeting is not None
        assert greeting["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
    finally:
        await client.close()
