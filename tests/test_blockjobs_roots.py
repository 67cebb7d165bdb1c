"""Which nodes a mirror may read from and write into, as QEMU 7.2 answers.

A running mirror's target sits under the mirror's block backend, so it is no
longer a root node: mirroring from it is refused with "Need a root block
node" before any busy check. A running backup's source is under the
backup's filter, which does not share writes: a mirror into it is refused
with a permission conflict. Both checked live against qemu-storage-daemon
7.2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .support.blockjobs import J, JobClient, add_null

pytestmark = pytest.mark.timeout(20)


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


async def test_a_mirror_cannot_write_into_a_running_backups_source(
    c: JobClient, tmp_path: Path
) -> None:
    """QEMU 7.2 refuses it (the backup's filter does not share writes to its
    source): the job is created, dropped, then the permission conflict."""
    for name in ("a", "b", "c"):
        await add_null(c, name, 1 << 20)
    await c.ok("blockdev-backup", device="a", target="b", sync="none", **{"job-id": "j1"})
    c.take()
    conflict = (
        "GenericError",
        "Permission conflict on node 'a': permissions 'write' are both required by an unnamed "
        "block device (uses node 'a' as 'root' child) and unshared by the filter of a backup job",
    )
    assert (
        await c.error("blockdev-mirror", device="c", target="a", sync="full", **{"job-id": "j2"})
        == conflict
    )
    assert c.take() == [J("created", "j2"), J("null", "j2")]
    # nothing is held: the backup goes on, and once it is gone the mirror may start
    await c.ok("job-cancel", id="j1")
    await c.wait_for("J", "null", "j1")
    await c.ok("blockdev-mirror", device="c", target="a", sync="full", **{"job-id": "j2"})
    await c.ok("job-cancel", id="j2")


@pytest.mark.xfail(
    strict=True,
    reason="qmpjobd difference: a node's parents do not pass their users' unshared "
    "permissions down to it (QEMU's permission propagation is not modelled)",
)
async def test_a_mirror_cannot_write_under_a_raw_node_a_backup_reads(c: JobClient) -> None:
    """QEMU 7.2: raw 'r' over 'b' is a running backup's source, so 'r' does not
    share writes to 'b'; a mirror into 'b' is refused (created, null, error)."""
    for name in ("a", "b", "c"):
        await add_null(c, name, 1 << 20)
    await c.ok("blockdev-add", driver="raw", file="b", **{"node-name": "r"})
    await c.ok("blockdev-backup", device="r", target="c", sync="none", **{"job-id": "j1"})
    reply = await c.cmd("blockdev-mirror", device="a", target="b", sync="full", **{"job-id": "j2"})
    if "return" in reply:
        await c.ok("job-cancel", id="j2")
    await c.ok("job-cancel", id="j1")
    assert reply == {
        "error": {
            "class": "GenericError",
            "desc": "Permission conflict on node 'b': permissions 'write' are both required by "
            "an unnamed block device (uses node 'b' as 'root' child) and unshared by node 'r' "
            "(uses node 'b' as 'file' child).",
        }
    }
