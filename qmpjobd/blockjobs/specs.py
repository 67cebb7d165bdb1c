"""What a job-starting command asks for, as typed values.

The command layer turns each command's QMP arguments (already checked
against the schema) into one of these frozen records; the service takes
them and knows no QMP member name. Defaults are QEMU's.

Must not import: sockets, JSON, wire, protocol, schema, commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..block.drivers.qcow2 import Qcow2CreateOptions
from .policy import OnError

SyncMode = Literal["full", "top", "none", "incremental", "bitmap"]
NewImageMode = Literal["absolute-paths", "existing"]


@dataclass(frozen=True, slots=True)
class JobSettings:
    """The members every job-starting command shares."""

    job_id: str = ""
    speed: int = 0
    auto_finalize: bool = True
    auto_dismiss: bool = True
    on_source_error: OnError = "report"
    on_target_error: OnError = "report"


@dataclass(frozen=True, slots=True)
class NewImage:
    """``drive-*``: the target is a file name; the image is created unless
    ``mode`` is ``existing``."""

    filename: str
    format: str | None = None
    mode: NewImageMode = "absolute-paths"


@dataclass(frozen=True, slots=True)
class BackupSpec:
    """``blockdev-backup`` (``target`` names a node) or ``drive-backup``
    (``new_image`` names a file)."""

    device: str
    sync: SyncMode
    job: JobSettings
    target: str | None = None
    new_image: NewImage | None = None
    bitmap: str | None = None
    bitmap_mode: str | None = None
    compress: bool = False
    #: ``x-perf``
    max_workers: int = 64
    max_chunk: int = 0
    #: x-perf's min-cluster-size (QEMU 9.1); 0: the default
    min_cluster_size: int = 0
    #: discard what was copied from the source (QEMU 9.1)
    discard_source: bool = False


@dataclass(frozen=True, slots=True)
class AbortAction:
    """The ``abort`` action of a transaction."""


@dataclass(frozen=True, slots=True)
class TransactionSpec:
    actions: tuple[BackupSpec | AbortAction, ...]
    grouped: bool = False


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """``blockdev-mirror`` (``target`` names a node) or ``drive-mirror``
    (``new_image`` names a file, ``node_name`` names its node)."""

    device: str
    sync: SyncMode
    job: JobSettings
    target: str | None = None
    new_image: NewImage | None = None
    node_name: str | None = None
    replaces: str | None = None
    granularity: int = 0
    buf_size: int = 0
    #: "background", or "write-blocking": guest writes reach the target too
    copy_mode: str = "background"


@dataclass(frozen=True, slots=True)
class CreateSpec:
    """``blockdev-create``: the job id and the image options."""

    job_id: str
    driver: str
    filename: str
    size: int
    preallocation: str = "off"
    #: qcow2: the node to format (a node name, or options of a node opened
    #: for the job) and the image options
    file: str | dict[str, Any] | None = None
    qcow2: Qcow2CreateOptions | None = None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """``block-stream``: stream into ``device`` from the layers above
    ``base`` (a backing file name), ``base_node`` or down to ``bottom``."""

    device: str
    job: JobSettings
    base: str | None = None
    base_node: str | None = None
    bottom: str | None = None
    backing_file: str | None = None
    on_error: OnError = "report"


@dataclass(frozen=True, slots=True)
class CommitSpec:
    """``block-commit``: commit ``top_node``/``top`` (default: the device
    itself, an active commit) of ``device``'s chain into ``base_node``/``base``
    (default: the bottom of the chain)."""

    device: str
    job: JobSettings
    job_id_given: bool = False
    base: str | None = None
    base_node: str | None = None
    top: str | None = None
    top_node: str | None = None
    backing_file: str | None = None
    on_error: OnError = "report"
