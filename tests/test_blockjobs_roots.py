"""Which nodes a mirror may start from: only root nodes, as QEMU 7.2 answers.

A running mirror's target sits under the mirror's block backend, so it is no
longer a root node: mirroring from it is refused with "Need a root block
node" before any busy check (checked live against qemu-storage-daemon 7.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .support.blockjobs import JobClient, add_null

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def c(sock: Path) -> AsyncIterator[JobClient]:
    client = await JobClient.connect(sock)
    yield client
    await client.close()


async def test_a_mirror_target_is_not_a_root_node(c: JobClient, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        await add_null(c, name, 1 << 20)
    await c.ok("blockdev-mirror", device="a", target="b", sync="full", **{"job-id": "m1"})
    assert await c.error(
        "blockdev-mirror", device="b", target="c", sync="full", **{"job-id": "m2"}
    ) == ("GenericError", "Need a root block node")
    for mode in ({"format": "raw"}, {"mode": "existing"}):
        assert await c.error(
            "drive-mirror",
            device="b",
            target=str(tmp_path / "t.img"),
            sync="full",
            **{"job-id": "m2"},
            **mode,
        ) == ("GenericError", "Need a root block node")
    # once the mirror is gone, the node is a root node again
    await c.ok("job-cancel", id="m1")
    await c.wait_for("J", "null", "m1")
    await c.ok("blockdev-mirror", device="b", target="c", sync="full", **{"job-id": "m2"})
    await c.ok("job-cancel", id="m2")
