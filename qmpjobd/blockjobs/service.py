"""The job-starting operations: backup, mirror, create and transactions.

:class:`BlockJobService` does what QEMU 7.2's ``blockdev-backup``,
``drive-backup``, ``blockdev-mirror``, ``drive-mirror``, ``blockdev-create``
and ``transaction`` do, with their argument checks in QEMU's order and with
its texts. Each operation takes a typed spec (:mod:`.specs`) that the
command layer built from arguments already checked against the schema; no
QMP member name is read here. A job is created only once every check that
QEMU makes before creating it has passed.

Draining, as QEMU does it: a transaction (and ``blockdev-backup`` and
``drive-backup``, which are one-action transactions) first drains every
job, then each backup action drains the users of its source until all
actions are done, so a new backup shows ``created, running, paused,
running`` before the reply. Mirror and create do not drain.

Must not import: sockets, JSON, wire, protocol, schema, commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

from ..block import BlockGraph, BlockNode, NodeReference
from ..block.create import PREALLOCATION_MODES
from ..block.drivers.qcow2 import Qcow2Node
from ..block.qcow2 import MAGIC as QCOW2_MAGIC
from ..block.qcow2 import create_path as qcow2_create_path
from ..errors import ErrorClass, QMPError
from ..jobs import Job, JobManager, JobStatus, Transaction
from .commit import ActiveCommitDriver, CommitDriver, LayersMirrorDriver
from .copy import CLUSTER
from .drivers import (
    BackupDriver,
    BackupSync,
    BlockJobDriver,
    CreateDriver,
    MirrorDriver,
    Qcow2CreateDriver,
)
from .specs import (
    AbortAction,
    BackupSpec,
    CommitSpec,
    CreateSpec,
    JobSettings,
    MirrorSpec,
    NewImage,
    StreamSpec,
    TransactionSpec,
)
from .stream import StreamDriver

_INT_MAX = (1 << 31) - 1
#: Write-locked block graph sections QEMU 10.0 opens starting a job, before
#: and after it creates the job (each drains every node; see
#: JobManager.graph_changed). Measured with an unrelated running job.
_BACKUP_SECTIONS_BEFORE_CREATE = 4
_BACKUP_SECTIONS_AFTER_CREATE = 1
_MIRROR_SECTIONS_BEFORE_CREATE = 2
_MIRROR_SECTIONS_AFTER_CREATE = 2
#: block-stream (its copy-on-read filter goes in above the top), one more
#: before creating when the top is reopened read-write for the job.
_STREAM_SECTIONS_BEFORE_CREATE = 3
_STREAM_SECTIONS_AFTER_CREATE = 2
#: An intermediate block-commit, one more after creating per node reopened
#: read-write for the job; an active commit opens a mirror's (one more
#: before creating when its base is reopened read-write).
_COMMIT_SECTIONS_BEFORE_CREATE = 1
_COMMIT_SECTIONS_AFTER_CREATE = 4
#: Image formats qmpjobd can create and open as a job's target.
_TARGET_FORMATS = ("raw", "file", "qcow2")
#: Drivers QEMU knows but that cannot create images.
_NO_CREATE_FORMATS = ("null-co", "null-aio", "blkdebug")


def _target_format(image: NewImage, source: BlockNode) -> str | None:
    """The format of a ``drive-*`` target: the one given; for a new image the
    source's; for an existing one, a plain file when the source is a protocol
    node (QEMU opens the target with the source's flags), else what probing
    finds (None here)."""
    if image.format is not None:
        return image.format
    if image.mode != "existing":
        return source.driver
    return "file" if source.protocol else None


def _busy(node: BlockNode, op: str = "") -> None:
    reason = node.busy_reason_for(op) if op else node.busy_reason
    if reason is not None:
        raise QMPError(f"Node '{node.node_name}' is busy: {reason}")


def _unallocated(node: BlockNode) -> bool:
    """Whether the node's data comes from a null driver that reports no
    allocation (no ``read-zeroes``)."""
    while True:
        if node.driver in ("null-co", "null-aio"):
            return not node.options.get("read-zeroes", False)
        child = node.children.get("file") or node.children.get("image")
        if child is None:
            return False
        node = child


class BlockJobService:
    """Starts block jobs on ``graph``'s nodes, registered with ``jobs``."""

    def __init__(
        self,
        jobs: JobManager,
        graph: BlockGraph,
        *,
        txn_start_reversed: bool = False,
        txn_grouped_checked_first: bool = False,
    ) -> None:
        """*txn_start_reversed*: a transaction's jobs start (and its drained
        sections end) in reverse action order; *txn_grouped_checked_first*:
        grouped completion is refused up front unless every action is a
        backup (both QEMU 8.1)."""
        self.jobs = jobs
        self.graph = graph
        self._txn_start_reversed = txn_start_reversed
        self._txn_grouped_checked_first = txn_grouped_checked_first
        #: nodes with a job's filter on top (a backup's source or target, a
        #: mirror's source): no longer root nodes
        self._filtered: Counter[BlockNode] = Counter()
        #: sources of running backups: their writes may not be shared
        self._backup_sources: Counter[BlockNode] = Counter()
        graph.has_filter_parent = lambda node: self._filtered[node] > 0

    # ------------------------------------------------------------ helpers

    def _root_node(self, name: str) -> BlockNode:
        node = self.graph.lookup(name)
        # A mirror's target has the mirror's block backend above it: not a root.
        if self._filtered[node] or self.graph.has_parents(node) or node.backends:
            raise QMPError("Need a root block node")
        return node

    def _mark(self, counter: Counter[BlockNode], node: BlockNode, driver: BlockJobDriver) -> None:
        counter[node] += 1

        def release() -> None:
            counter[node] -= 1
            if counter[node] <= 0:
                del counter[node]

        driver.hold(release)

    def _attach_backend(self, node: BlockNode, driver: BlockJobDriver) -> None:
        node.backends += 1

        def release() -> None:
            node.backends -= 1

        driver.hold(release)

    def _users_of(self, node: BlockNode) -> contextlib.AbstractAsyncContextManager[None]:
        def uses(job: Job) -> bool:
            return isinstance(job.driver, BlockJobDriver) and node in job.driver.nodes

        return self.jobs.drained(uses)

    @staticmethod
    def _check_create_format(fmt: str) -> None:
        if fmt in _TARGET_FORMATS:
            return
        if fmt in _NO_CREATE_FORMATS:
            raise QMPError(f"Format driver '{fmt}' does not support image creation")
        raise QMPError(f"Unknown file format '{fmt}'")

    def _open_target(
        self, filename: str, fmt: str | None, node_name: str | None, extra: Mapping[str, Any]
    ) -> NodeReference:
        if fmt is None:
            fmt = self._probe(filename)
        if fmt not in _TARGET_FORMATS:
            raise QMPError(f"Unknown driver '{fmt}'")
        options: dict[str, Any]
        if fmt in ("raw", "qcow2"):
            options = {"driver": fmt, "file": {"driver": "file", "filename": filename}}
        else:
            options = {"driver": "file", "filename": filename}
        if node_name is not None:
            options["node-name"] = node_name
        options.update(extra)
        return self.graph.open_implicit(options)

    def _probe(self, filename: str) -> str:
        """The format QEMU's probing finds in an existing image: qcow2 by its
        magic, else raw."""
        self.graph.check_path(filename)
        try:
            with open(filename, "rb") as f:
                magic = f.read(4)
        except OSError:
            return "raw"  # opening it reports the error
        return "qcow2" if magic == QCOW2_MAGIC else "raw"

    async def _create_target(
        self, filename: str, fmt: str, size: int, backing: BlockNode | None
    ) -> None:
        """Create the image of a ``drive-*`` target: a qcow2 image names
        ``backing`` (by its filename and format) as its backing file."""
        if fmt != "qcow2":
            await self.graph.create_file(filename, size)
            return
        self.graph.check_path(filename)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.graph.executor,
                functools.partial(
                    qcow2_create_path,
                    filename,
                    size,
                    backing_file=None if backing is None else backing.filename,
                    backing_format=None if backing is None else backing.driver,
                ),
            )
        except OSError as exc:
            raise QMPError(f"Could not create '{filename}': {os.strerror(exc.errno or 0)}") from exc

    # ------------------------------------------------------------- backup

    async def backup(self, spec: BackupSpec) -> None:
        """``blockdev-backup`` and ``drive-backup``: a transaction of one action."""
        await self.transaction(TransactionSpec((spec,)))

    async def transaction(self, spec: TransactionSpec) -> None:
        """``transaction`` with ``abort``, ``blockdev-backup`` and ``drive-backup`` actions.

        Every job is created first and started only when all actions
        succeeded; on a failure the jobs created so far are cancelled
        (``created, aborting, concluded, null``) and the error is raised.

        :raise QMPError: the first action's error, with QEMU's text.
        """
        if self._txn_grouped_checked_first and spec.grouped:
            for action in spec.actions:
                if isinstance(action, AbortAction):
                    raise QMPError(
                        "Action 'abort' does not support transaction property "
                        "completion-mode = grouped"
                    )
        async with self.jobs.drained():
            pass  # QEMU drains every node before a transaction's actions
        txn = Transaction(grouped=True) if spec.grouped else None
        created: list[Job] = []
        sections: list[contextlib.AbstractAsyncContextManager[None]] = []
        try:
            try:
                for action in spec.actions:
                    if isinstance(action, AbortAction):
                        raise QMPError("Transaction aborted using Abort action")
                    created.append(await self._backup_action(action, txn, sections))
            except QMPError:
                for job in reversed(created):
                    if job.status is not JobStatus.NULL:
                        self.jobs.cancel(job, force=True)
                raise
            for job in reversed(created) if self._txn_start_reversed else created:
                self.jobs.start(job)
        finally:
            # Like QEMU's clean step, the drained sections end in the order
            # the jobs started.
            for section in reversed(sections) if self._txn_start_reversed else sections:
                await section.__aexit__(None, None, None)

    async def _drain_users(
        self, node: BlockNode, sections: list[contextlib.AbstractAsyncContextManager[None]]
    ) -> None:
        section = self._users_of(node)
        await section.__aenter__()
        sections.append(section)

    async def _backup_action(
        self,
        spec: BackupSpec,
        txn: Transaction | None,
        sections: list[contextlib.AbstractAsyncContextManager[None]],
    ) -> Job:
        image = spec.new_image
        if image is None:
            assert spec.target is not None
            source = self.graph.lookup(spec.device)
            target = self.graph.lookup(spec.target)
            await self._drain_users(source, sections)
            return self._backup_common(spec, source, target, txn, None, zero_target=False)
        source = self.graph.lookup(spec.device)
        await self._drain_users(source, sections)
        fmt = _target_format(image, source)
        _busy(source, "backup-source")
        backing: BlockNode | None = None
        if spec.sync == "top":
            backing = source.backing_node()
        elif spec.sync == "none":
            backing = source
        extra: dict[str, Any] = {"discard": "unmap", "detect-zeroes": "unmap"}
        if image.mode != "existing":
            assert fmt is not None
            self._check_create_format(fmt)
            if backing is not None and fmt != "qcow2":
                raise QMPError(f"Backing file not supported for file format '{fmt}'")
            await self._create_target(image.filename, fmt, source.size, backing)
            if backing is source:
                extra["backing"] = source.node_name
        else:
            fmt = fmt or self._probe(image.filename)
            if spec.sync == "none" and fmt == "qcow2":
                # An existing image gets the source as its backing node too.
                extra["backing"] = source.node_name
        ref = self._open_target(image.filename, fmt, None, extra)
        try:
            if spec.sync == "none" and image.mode == "existing" and fmt != "qcow2":
                # QEMU opens the target, then cannot give it the source as backing.
                node = ref.node
                raise QMPError(
                    f"Driver '{node.driver}' of node '{node.node_name}' "
                    "does not support backing files"
                )
            return self._backup_common(
                spec,
                source,
                ref.node,
                txn,
                ref,
                zero_target=image.mode != "existing" and backing is None,
            )
        except BaseException:
            ref.release()
            raise

    def _backup_common(
        self,
        spec: BackupSpec,
        source: BlockNode,
        target: BlockNode,
        txn: Transaction | None,
        target_ref: NodeReference | None,
        *,
        zero_target: bool,
    ) -> Job:
        sync = spec.sync
        bitmap = spec.bitmap
        bitmap_mode = spec.bitmap_mode
        if sync in ("bitmap", "incremental") and bitmap is None:
            raise QMPError(f"must provide a valid bitmap name for '{sync}' sync mode")
        if sync == "incremental" and bitmap_mode not in (None, "on-success"):
            raise QMPError(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"
            )
        if bitmap is not None:
            raise QMPError(f"Bitmap '{bitmap}' could not be found")
        if bitmap_mode is not None:
            raise QMPError("Cannot specify bitmap sync mode without a bitmap")
        if source is target:
            raise QMPError("Source and target cannot be the same")
        if spec.compress:
            # QEMU names the target's BlockBackend, which has no name here.
            raise QMPError("Compression is not supported for this drive ")
        _busy(source, "backup-source")
        _busy(target, "backup-target")
        if self._backup_sources[target]:
            raise QMPError(
                f"Could not create node: Permission conflict on node '{target.node_name}': "
                "permissions 'write' are both required by a backup job and unshared "
                "by the filter of another backup job"
            )
        if not 1 <= spec.max_workers <= _INT_MAX:
            raise QMPError(f"max-workers must be between 1 and {_INT_MAX}")
        if spec.max_chunk < 0:
            raise QMPError("max-chunk must be zero (which means no limit) or positive")
        if source.size != target.size:
            raise QMPError("Source and target image have different sizes")
        # The copy-before-write filter (a new node) takes both as children.
        for node, role in ((source, "file"), (target, "target")):
            if not node.active:
                raise QMPError(
                    f"Could not create node: Inactive '{node.node_name}' can't be a {role} "
                    f"child of active '{self.graph.generate_name()}'"
                )
        size = spec.min_cluster_size % (1 << 64)  # a size: negative values wrap
        if size & (size - 1):
            raise QMPError(
                "Could not create node: Cannot create block-copy-state: "
                "min-cluster-size needs to be a power of 2"
            )
        if target.read_only:
            raise QMPError("Could not create node: Block node is read-only")
        # QEMU's block-copy cluster: 64 KiB, or the target's cluster size,
        # or min-cluster-size, whichever is largest.
        cluster = max(CLUSTER, target.cluster_size() or 0, size)
        settings = spec.job
        # QEMU 10.0 inserts the copy-before-write filter and attaches the
        # job's nodes in write-locked sections, each draining every node.
        self.jobs.graph_changed(_BACKUP_SECTIONS_BEFORE_CREATE)
        driver = BackupDriver(
            source,
            target,
            cast(BackupSync, sync),
            zero_target=zero_target,
            clock=self.jobs.clock,
            executor=self.graph.executor,
            on_source_error=settings.on_source_error,
            on_target_error=settings.on_target_error,
            cluster=cluster,
            discard_source=spec.discard_source,
        )
        job = self._create(settings, driver, txn)
        if spec.discard_source and source.read_only:
            # The job, once created, cannot take write on its source.
            self.jobs.discard(job)
            raise QMPError("Block node is read-only")
        self.jobs.graph_changed(_BACKUP_SECTIONS_AFTER_CREATE)
        if target_ref is not None:
            driver.hold(target_ref.release)
        driver.hold(self.graph.reference(source).release)
        driver.hold(target.block_job("backup").release)
        self._mark(self._filtered, source, driver)
        self._mark(self._filtered, target, driver)
        self._mark(self._backup_sources, source, driver)
        return job

    def _create(
        self, settings: JobSettings, driver: BlockJobDriver, txn: Transaction | None
    ) -> Job:
        return self.jobs.create(
            settings.job_id,
            driver,
            txn=txn,
            speed=settings.speed,
            auto_finalize=settings.auto_finalize,
            auto_dismiss=settings.auto_dismiss,
        )

    # ------------------------------------------------------------- mirror

    def blockdev_mirror(self, spec: MirrorSpec) -> None:
        """``blockdev-mirror``.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        assert spec.target is not None
        source = self._root_node(spec.device)
        target = self.graph.lookup(spec.target)
        self._mirror_common(spec, source, target, None, zero_target=False)

    async def drive_mirror(self, spec: MirrorSpec) -> None:
        """``drive-mirror``: creates the target file unless its mode is ``existing``.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        image = spec.new_image
        assert image is not None
        source = self._root_node(spec.device)
        _busy(source)
        fmt = _target_format(image, source)
        if spec.replaces is not None and spec.node_name is None:
            raise QMPError("a node-name must be provided when replacing a named node of the graph")
        backing: BlockNode | None = None
        if spec.sync == "top":
            backing = source.backing_node()
        elif spec.sync == "none":
            backing = source
        if image.mode != "existing":
            assert fmt is not None
            self._check_create_format(fmt)
            if backing is not None and fmt != "qcow2":
                raise QMPError(f"Backing file not supported for file format '{fmt}'")
            await self._create_target(image.filename, fmt, source.size, backing)
        if fmt is None:
            fmt = self._probe(image.filename)
        # Mirroring takes care of copy-on-write using the source's backing file.
        extra = {"backing": None} if fmt == "qcow2" else {}
        ref = self._open_target(image.filename, fmt, spec.node_name, extra)
        try:
            self._mirror_common(spec, source, ref.node, ref, zero_target=image.mode != "existing")
        except BaseException:
            ref.release()
            raise

    def _mirror_common(
        self,
        spec: MirrorSpec,
        source: BlockNode,
        target: BlockNode,
        target_ref: NodeReference | None,
        *,
        zero_target: bool,
    ) -> Job:
        granularity = spec.granularity
        if granularity and not 512 <= granularity <= 64 << 20:
            raise QMPError("Parameter 'granularity' expects a value in range [512B, 64MB]")
        if granularity & (granularity - 1):
            raise QMPError("Parameter 'granularity' expects a power of 2")
        _busy(source)
        _busy(target)
        replaces = spec.replaces
        if replaces is not None:
            to_replace = self.graph.get(replaces)
            if to_replace is None:
                raise QMPError(f"Failed to find node with node-name='{replaces}'")
            _busy(to_replace)
            if to_replace is not source:
                raise QMPError(
                    f"Cannot replace '{replaces}' by a node mirrored from "
                    f"'{source.node_name}', because it cannot be guaranteed that doing "
                    "so would not lead to an abrupt change of visible data"
                )
        sync = spec.sync
        if sync in ("incremental", "bitmap"):
            raise QMPError(f"Sync mode '{sync}' not supported")
        if spec.buf_size < 0:
            raise QMPError("Invalid parameter 'buf-size'")
        if source is target:
            raise QMPError("Can't mirror node into itself")
        # With no guest writes, "none" has nothing to copy. On a zeroed target
        # QEMU's mirror marks only allocated blocks dirty, and a null-co
        # source without read-zeroes has none.
        copy_all = sync != "none" and not (zero_target and _unallocated(source))
        settings = spec.job
        driver: MirrorDriver
        chain = self._mirror_layers(source, sync, zero_target)
        if chain is not None:
            driver = LayersMirrorDriver(
                chain,
                target,
                copy_mode=spec.copy_mode,
                zero_target=zero_target and sync == "full",
                clock=self.jobs.clock,
                executor=self.graph.executor,
                on_source_error=settings.on_source_error,
                on_target_error=settings.on_target_error,
            )
        else:
            driver = MirrorDriver(
                source,
                target,
                copy_all=copy_all,
                copy_mode=spec.copy_mode,
                zero_target=zero_target,
                clock=self.jobs.clock,
                executor=self.graph.executor,
                on_source_error=settings.on_source_error,
                on_target_error=settings.on_target_error,
            )
        if not source.active:
            # The mirror filter (a new node) takes the source as its child.
            raise QMPError(
                f"Inactive '{source.node_name}' can't be a backing child of active "
                f"'{self.graph.generate_name()}'"
            )
        if target.read_only or not target.active:
            # Every check has passed but one that QEMU makes only once the
            # job exists, when it asks for write access to its target: the
            # job is announced and dropped (created, null), then the error.
            self.jobs.discard(self._create(settings, driver, None))
            raise QMPError(
                "Block node is read-only"
                if target.read_only
                else "Permission 'write' unavailable on inactive node"
            )
        if self._backup_sources[target]:
            # A running backup's filter does not share writes to its source.
            # QEMU names that filter by its generated node name; we have none.
            self.jobs.discard(self._create(settings, driver, None))
            raise QMPError(
                f"Permission conflict on node '{target.node_name}': permissions 'write' are "
                f"both required by an unnamed block device (uses node '{target.node_name}' "
                "as 'root' child) and unshared by the filter of a backup job"
            )
        self.jobs.graph_changed(_MIRROR_SECTIONS_BEFORE_CREATE)
        job = self._create(settings, driver, None)
        self.jobs.graph_changed(_MIRROR_SECTIONS_AFTER_CREATE)
        if target_ref is not None:
            driver.hold(target_ref.release)
        driver.hold(source.block_job("mirror").release)
        driver.hold(target.block_job("mirror").release)
        self._attach_backend(target, driver)
        self._mark(self._filtered, source, driver)
        self.jobs.start(job)
        return job

    # ------------------------------------------------------------- stream

    def _chain_contains(self, top: BlockNode, node: BlockNode) -> bool:
        """QEMU's ``bdrv_chain_contains``: ``node`` is ``top`` or below it."""
        cur: BlockNode | None = top
        while cur is not None and cur is not node:
            cur = cur.backing_node()
        return cur is not None

    @staticmethod
    def _find_backing_image(top: BlockNode, name: str) -> BlockNode | None:
        """QEMU's ``bdrv_find_backing_image``: the layer below ``top`` whose
        backing file name (as the header has it, or made absolute) or
        filename is ``name``."""
        cur = top
        while True:
            below = cur.backing_node()
            if below is None:
                return None
            header = cur.image_info_members()
            names = {header.get("backing-filename"), header.get("full-backing-filename")}
            if name in names or name == below.filename:
                return below
            cur = below

    def stream(self, spec: StreamSpec) -> None:
        """``block-stream``.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        if spec.base is not None and spec.base_node is not None:
            raise QMPError("'base' and 'base-node' cannot be specified at the same time")
        if spec.base is not None and spec.bottom is not None:
            raise QMPError("'base' and 'bottom' cannot be specified at the same time")
        if spec.bottom is not None and spec.base_node is not None:
            raise QMPError("'bottom' and 'base-node' cannot be specified at the same time")
        top = self.graph.lookup(spec.device)
        base: BlockNode | None = None
        base_name: str | None = None
        bottom: BlockNode | None = None
        if spec.base is not None:
            base = self._find_backing_image(top, spec.base)
            if base is None:
                raise QMPError(f"Can't find '{spec.base}' in the backing chain")
            base_name = base.filename
        if spec.base_node is not None:
            base = self._node_only(spec.base_node)
            if base is top or not self._chain_contains(top, base):
                raise QMPError(f"Node '{spec.base_node}' is not a backing image of '{spec.device}'")
            base_name = base.filename
        if spec.bottom is not None:
            bottom = self._node_only(spec.bottom)
            if not self._chain_contains(top, bottom):
                raise QMPError(
                    f"Node '{spec.bottom}' is not in a chain starting from '{spec.device}'"
                )
        end = bottom.backing_node() if bottom is not None else base
        cur: BlockNode | None = top
        while cur is not None and cur is not end:
            _busy(cur, "stream")
            cur = cur.backing_node()
        if base is None and spec.backing_file is not None:
            raise QMPError("backing file specified, but streaming the entire chain")
        if spec.backing_file is not None:
            base_name = spec.backing_file
        if bottom is not None:
            base = bottom.backing_node()
            base_name = None if base is None else base.filename
        layers: list[BlockNode] = []
        cur = top.backing_node()
        while cur is not None and cur is not base:
            layers.append(cur)
            cur = cur.backing_node()
        if layers and not isinstance(top, Qcow2Node):
            raise QMPError("Block node is read-only")
        top_read_only = top.read_only
        if top_read_only and (layers or top.backing_node() is not None):
            top.reopen_read_write()  # QEMU reopens it for the job, then gives it back
        settings = spec.job
        assert isinstance(top, Qcow2Node) or not layers
        driver = StreamDriver(
            self.graph,
            top,  # type: ignore[arg-type]
            layers,
            base,
            base_name,
            clock=self.jobs.clock,
            executor=self.graph.executor,
            on_error=spec.on_error,
        )
        if top_read_only:
            driver.top_read_only = True
            driver.hold(top.reopen_read_only)
        self.jobs.graph_changed(_STREAM_SECTIONS_BEFORE_CREATE + (1 if top_read_only else 0))
        try:
            job = self._create(settings, driver, None)
        except QMPError:
            if top_read_only:
                top.reopen_read_only()
            raise
        self.jobs.graph_changed(_STREAM_SECTIONS_AFTER_CREATE)
        driver.hold_node(self.graph.reference(top).release)
        driver.hold_node(top.block_job("stream").release)
        for layer in layers:
            driver.hold_node(self.graph.reference(layer).release)
            driver.hold_node(layer.block_job("stream").release)
        self._mark(self._filtered, top, driver)
        self.jobs.start(job)

    # ------------------------------------------------------------- commit

    def commit(self, spec: CommitSpec) -> None:
        """``block-commit``: intermediate or active.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        bs = self.graph.get(spec.device)
        if bs is None:
            raise QMPError(f"Device '{spec.device}' not found", ErrorClass.DEVICE_NOT_FOUND)
        bs = self._root_node(spec.device)
        _busy(bs, "commit-source")
        top: BlockNode | None = bs
        if spec.top_node is not None and spec.top is not None:
            raise QMPError("'top-node' and 'top' are mutually exclusive")
        if spec.top_node is not None:
            top = self._node_only(spec.top_node)
            if not self._chain_contains(bs, top):
                raise QMPError(f"'{spec.top_node}' is not in this backing file chain")
        elif spec.top is not None and bs.filename != spec.top:
            top = self._find_backing_image(bs, spec.top)
        if top is None:
            raise QMPError(f"Top image file {spec.top} not found")
        if spec.base_node is not None and spec.base is not None:
            raise QMPError("'base-node' and 'base' are mutually exclusive")
        if spec.base_node is not None:
            base = self._node_only(spec.base_node)
            if not self._chain_contains(top, base):
                raise QMPError(f"'{spec.base_node}' is not in this backing file chain")
        elif spec.base is not None:
            found = self._find_backing_image(top, spec.base)
            if found is None:
                raise QMPError(f"Can't find '{spec.base}' in the backing chain")
            base = found
        else:
            base = top
            while (below := base.backing_node()) is not None:
                base = below
        end = base.backing_node()
        cur: BlockNode | None = top
        while cur is not None and cur is not end:
            _busy(cur, "commit-target")
            cur = cur.backing_node()
        if top is base:
            raise QMPError("cannot commit an image into itself")
        layers: list[BlockNode] = []
        cur = top
        while cur is not None and cur is not base:
            layers.append(cur)
            cur = cur.backing_node()
        settings = spec.job
        if top is bs:
            if spec.backing_file is not None:
                raise QMPError("'backing-file' specified, but 'top' is the active layer")
            base_reopened = base.read_only
            if base_reopened:
                base.reopen_read_write()
            active = ActiveCommitDriver(
                layers,
                base,
                clock=self.jobs.clock,
                executor=self.graph.executor,
                on_error=spec.on_error,
            )
            self.jobs.graph_changed(_MIRROR_SECTIONS_BEFORE_CREATE + (1 if base_reopened else 0))
            job = self._create(settings, active, None)
            self.jobs.graph_changed(_MIRROR_SECTIONS_AFTER_CREATE)
            self._hold_commit(active, [*layers, base])
            self._attach_backend(base, active)
            self._mark(self._filtered, bs, active)
            self.jobs.start(job)
            return
        overlay = bs
        while overlay.backing_node() is not top:
            below = overlay.backing_node()
            assert below is not None
            overlay = below
        _busy(overlay, "commit-target")
        if not isinstance(overlay, Qcow2Node):
            raise QMPError("Block node is read-only")
        driver = CommitDriver(
            self.graph,
            overlay,
            layers,
            base,
            spec.backing_file,
            clock=self.jobs.clock,
            executor=self.graph.executor,
            on_error=spec.on_error,
        )
        self.jobs.graph_changed(_COMMIT_SECTIONS_BEFORE_CREATE)
        job = self._create(settings, driver, None)
        reopened = 0
        try:
            driver.base_read_only = base.read_only
            for node in (base, overlay):
                if node.read_only:
                    node.reopen_read_write()
                    reopened += 1
        except QMPError:
            self.jobs.discard(job)
            raise
        self.jobs.graph_changed(_COMMIT_SECTIONS_AFTER_CREATE + reopened)
        self._hold_commit(driver, [bs, *layers, base])
        # QEMU's commit job has a block backend on the top it commits and one
        # on the base: blockdev-del answers "Node %s is in use" for both.
        self._attach_backend(top, driver)
        self._attach_backend(base, driver)
        self._mark(self._filtered, bs, driver)
        self.jobs.start(job)

    def _hold_commit(self, driver: BlockJobDriver, nodes: list[BlockNode]) -> None:
        for node in nodes:
            driver.hold_node(self.graph.reference(node).release)
            driver.hold_node(node.block_job("commit").release)

    def _node_only(self, name: str) -> BlockNode:
        node = self.graph.get(name)
        if node is None:
            raise QMPError(f"Cannot find device='' nor node-name='{name}'")
        return node

    @staticmethod
    def _mirror_layers(source: BlockNode, sync: str, zero_target: bool) -> list[BlockNode] | None:
        """The layers whose allocated ranges a mirror of a backing chain
        copies (QEMU marks only those dirty): the source's own for ``top``,
        the whole chain for ``full`` onto a new image; None otherwise."""
        if source.backing_node() is None:
            return None
        if sync == "top":
            return [source]
        if sync == "full" and zero_target:
            layers: list[BlockNode] = []
            cur: BlockNode | None = source
            while cur is not None:
                layers.append(cur)
                cur = cur.backing_node()
            return layers
        return None

    # ------------------------------------------------------------- create

    def create(self, spec: CreateSpec) -> None:
        """``blockdev-create``: a ``create`` job (auto-dismiss off, no block-job events).

        :raise QMPError: "Driver does not support blockdev-create", a bad
            preallocation, or a job id error.
        """
        if spec.driver == "qcow2":
            assert spec.file is not None and spec.qcow2 is not None
            qcow2 = Qcow2CreateDriver(self.graph, spec.file, spec.qcow2)
            job = self.jobs.create(spec.job_id, qcow2, auto_finalize=True, auto_dismiss=False)
            self.jobs.start(job)
            return
        if spec.driver != "file":
            raise QMPError("Driver does not support blockdev-create")
        preallocation = spec.preallocation
        if preallocation not in PREALLOCATION_MODES:
            raise QMPError(f"Parameter 'preallocation' does not accept value '{preallocation}'")
        driver = CreateDriver(self.graph, spec.filename, spec.size, preallocation)
        job = self.jobs.create(spec.job_id, driver, auto_finalize=True, auto_dismiss=False)
        self.jobs.start(job)
