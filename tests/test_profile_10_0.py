"""The 10.0 profile where live transcripts cannot pin it down: job starts on
inactive nodes name a generated node (``#block`` and random digits)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qmpjobd.app import App, Config

from .conftest import RawClient


@pytest.fixture
async def client(sock_dir: Path) -> AsyncIterator[RawClient]:
    app = App(Config(sockets=[sock_dir / "qmp.sock"], qemu_version="10.0"))
    await app.start()
    try:
        c = await RawClient.connect(sock_dir / "qmp.sock")
        for name in ("s", "t"):
            args = {"driver": "null-co", "node-name": name, "size": 1 << 20}
            assert await c.execute("blockdev-add", args) == {"return": {}}
        yield c
        c.writer.close()
    finally:
        await app.shutdown()


def _desc(reply: dict[str, object]) -> str:
    error = reply["error"]
    assert isinstance(error, dict) and error["class"] == "GenericError"
    desc = error["desc"]
    assert isinstance(desc, str)
    return desc


async def _inactive(client: RawClient, node: str) -> None:
    args = {"active": False, "node-name": node}
    assert await client.execute("blockdev-set-active", args) == {"return": {}}


async def test_backup_from_an_inactive_source(client: RawClient) -> None:
    await _inactive(client, "s")
    args = {"job-id": "j", "device": "s", "target": "t", "sync": "full"}
    desc = _desc(await client.execute("blockdev-backup", args))
    assert re.fullmatch(
        r"Could not create node: Inactive 's' can't be a file child of active '#block\d+'", desc
    )
    assert await client.execute("query-jobs") == {"return": []}


async def test_backup_to_an_inactive_target(client: RawClient) -> None:
    await _inactive(client, "t")
    args = {"job-id": "j", "device": "s", "target": "t", "sync": "full"}
    desc = _desc(await client.execute("blockdev-backup", args))
    assert re.fullmatch(
        r"Could not create node: Inactive 't' can't be a target child of active '#block\d+'", desc
    )


async def test_mirror_of_an_inactive_source(client: RawClient) -> None:
    await _inactive(client, "s")
    args = {"job-id": "m", "device": "s", "target": "t", "sync": "full"}
    desc = _desc(await client.execute("blockdev-mirror", args))
    assert re.fullmatch(r"Inactive 's' can't be a backing child of active '#block\d+'", desc)
    assert await client.quiet() == []


async def test_mirror_to_an_inactive_target_is_created_then_dropped(client: RawClient) -> None:
    await _inactive(client, "t")
    args = {"job-id": "m", "device": "s", "target": "t", "sync": "full"}
    reply = await client.execute("blockdev-mirror", args)
    assert _desc(reply) == "Permission 'write' unavailable on inactive node"
    statuses = [e["data"]["status"] for e in await client.quiet()]
    assert statuses == ["created", "null"]


async def test_a_node_under_a_job_filter_stays_active(client: RawClient) -> None:
    args = {"job-id": "m", "device": "s", "target": "t", "sync": "full"}
    assert await client.execute("blockdev-mirror", args) == {"return": {}}
    reply = await client.execute("blockdev-set-active", {"active": False, "node-name": "s"})
    assert _desc(reply) == "Node has active parent node"
    # The target has only the job's block backend above it.
    reply = await client.execute("blockdev-set-active", {"active": False, "node-name": "t"})
    assert reply == {"return": {}}
    assert await client.execute("job-cancel", {"id": "m"}) == {"return": {}}
