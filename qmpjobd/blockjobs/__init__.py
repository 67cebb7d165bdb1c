"""Block jobs: the drivers that copy data between block nodes, and the
operations that start them.

* :class:`BlockJobService` — ``blockdev-backup``, ``drive-backup``,
  ``blockdev-mirror``, ``drive-mirror``, ``blockdev-create`` and
  ``transaction`` with QEMU 7.2's checks, texts and draining.
* :class:`BackupDriver`, :class:`MirrorDriver`, :class:`CreateDriver` — the
  job types.
* :class:`Copier` (chunked copy with hole skipping, ``copy_file_range``,
  error policies), :class:`RateLimiter` (bytes per 100 ms slice),
  :func:`error_action` (on-source-error / on-target-error).

May import: jobs, block, events, errors, clock. Must not import sockets,
JSON, wire, protocol, schema or commands.
"""

from .copy import CLUSTER, Copier
from .drivers import BackupDriver, BlockJobDriver, CreateDriver, MirrorDriver
from .events import (
    BLOCK_JOB_TYPES,
    BlockJobEvents,
    BlockJobInfo,
    block_job_cancel,
    find_block_job,
    is_block_job,
    query_block_jobs,
)
from .policy import ON_ERROR_VALUES, OnError, error_action
from .ratelimit import SLICE_SECONDS, RateLimiter
from .service import BlockJobService

__all__ = [
    "BLOCK_JOB_TYPES",
    "CLUSTER",
    "ON_ERROR_VALUES",
    "SLICE_SECONDS",
    "BackupDriver",
    "BlockJobDriver",
    "BlockJobEvents",
    "BlockJobInfo",
    "BlockJobService",
    "Copier",
    "CreateDriver",
    "MirrorDriver",
    "OnError",
    "RateLimiter",
    "block_job_cancel",
    "error_action",
    "find_block_job",
    "is_block_job",
    "query_block_jobs",
]
