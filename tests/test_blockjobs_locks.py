"""Image locking: what QEMU 7.2 refuses because another user holds a file.

QEMU takes byte-range locks on image files for the permissions their users
hold, so that one monitor cannot clobber an image another monitor's job is
writing. qmpjobd does not lock files yet; these strict xfails record what
qemu-storage-daemon 7.2 answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .support.blockjobs import JobClient, add_null

pytestmark = pytest.mark.timeout(20)


@pytest.mark.xfail(strict=True, reason="qmpjobd difference: no image locking")
async def test_blockdev_create_cannot_clobber_an_image_a_mirror_writes(
    c: JobClient, tmp_path: Path
) -> None:
    image = tmp_path / "t.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    await add_null(c, "a", 1 << 20)
    await c.ok("blockdev-add", driver="file", filename=str(image), **{"node-name": "t"})
    await c.ok("blockdev-mirror", device="a", target="t", sync="full", **{"job-id": "m"})
    await c.wait_for("J", "ready", "m")
    options = {"driver": "file", "filename": str(image), "size": 2 << 20}
    await c.ok("blockdev-create", options=options, **{"job-id": "cr"})
    await c.wait_for("J", "concluded", "cr")
    jobs = {info["id"]: info for info in await c.ok("query-jobs")}
    await c.ok("job-dismiss", id="cr")
    await c.ok("job-cancel", id="m")
    assert os.path.getsize(image) == 1 << 20
    assert jobs["cr"].get("error") == 'Failed to get "write" lock'
