"""The job-starting operations: backup, mirror, create and transactions.

:class:`BlockJobService` does what QEMU 7.2's ``blockdev-backup``,
``drive-backup``, ``blockdev-mirror``, ``drive-mirror``, ``blockdev-create``
and ``transaction`` do, with their argument checks in QEMU's order and with
its texts. Arguments arrive as plain mappings that the command layer has
already checked against the schema (types, enums, required members).

Draining, as QEMU does it: a transaction (and ``blockdev-backup`` and
``drive-backup``, which are one-action transactions) first drains every
job, then each backup action drains the users of its source until all
actions are done, so a new backup shows ``created, running, paused,
running`` before the reply. Mirror and create do not drain.

Must not import: sockets, JSON, wire, protocol, schema, commands.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..block import BlockGraph, BlockNode, NodeReference
from ..block.create import PREALLOCATION_MODES
from ..errors import QMPError
from ..jobs import Job, JobManager, JobStatus, Transaction
from .drivers import BackupDriver, BackupSync, BlockJobDriver, CreateDriver, MirrorDriver
from .policy import OnError

_INT_MAX = (1 << 31) - 1
#: Image formats qmpjobd can create and open as a job's target.
_TARGET_FORMATS = ("raw", "file")
#: Drivers QEMU knows but that cannot create images.
_NO_CREATE_FORMATS = ("null-co", "null-aio", "blkdebug")

Action = tuple[str, Mapping[str, Any]]


def _busy(node: BlockNode) -> None:
    reason = node.busy_reason
    if reason is not None:
        raise QMPError(
            f"Node '{node.node_name}' is busy: block device is in use by block job: {reason}"
        )


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

    def __init__(self, jobs: JobManager, graph: BlockGraph) -> None:
        self.jobs = jobs
        self.graph = graph
        #: nodes with a job's filter on top (a backup's source or target, a
        #: mirror's source): no longer root nodes
        self._filtered: Counter[BlockNode] = Counter()
        #: sources of running backups: their writes may not be shared
        self._backup_sources: Counter[BlockNode] = Counter()

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
        fmt = fmt or "raw"  # what probing finds in a file of ours
        if fmt not in _TARGET_FORMATS:
            raise QMPError(f"Unknown driver '{fmt}'")
        options: dict[str, Any]
        if fmt == "raw":
            options = {"driver": "raw", "file": {"driver": "file", "filename": filename}}
        else:
            options = {"driver": "file", "filename": filename}
        if node_name is not None:
            options["node-name"] = node_name
        options.update(extra)
        return self.graph.open_implicit(options)

    # ------------------------------------------------------------- backup

    async def blockdev_backup(self, args: Mapping[str, Any]) -> None:
        """``blockdev-backup``: a transaction of one action."""
        await self.transaction([("blockdev-backup", args)])

    async def drive_backup(self, args: Mapping[str, Any]) -> None:
        """``drive-backup``: a transaction of one action."""
        await self.transaction([("drive-backup", args)])

    async def transaction(self, actions: Sequence[Action], *, grouped: bool = False) -> None:
        """``transaction`` with ``abort``, ``blockdev-backup`` and ``drive-backup`` actions.

        Every job is created first and started only when all actions
        succeeded; on a failure the jobs created so far are cancelled
        (``created, aborting, concluded, null``) and the error is raised.

        :raise QMPError: the first action's error, with QEMU's text.
        """
        async with self.jobs.drained():
            pass  # QEMU drains every node before a transaction's actions
        txn = Transaction(grouped=True) if grouped else None
        created: list[Job] = []
        sections: list[contextlib.AbstractAsyncContextManager[None]] = []
        try:
            try:
                for kind, data in actions:
                    if kind == "abort":
                        raise QMPError("Transaction aborted using Abort action")
                    created.append(await self._backup_action(kind, data, txn, sections))
            except QMPError:
                for job in reversed(created):
                    if job.status is not JobStatus.NULL:
                        self.jobs.cancel(job, force=True)
                raise
            for job in created:
                self.jobs.start(job)
        finally:
            # Like QEMU's clean step, the drained sections end in action order.
            for section in sections:
                await section.__aexit__(None, None, None)

    async def _drain_users(
        self, node: BlockNode, sections: list[contextlib.AbstractAsyncContextManager[None]]
    ) -> None:
        section = self._users_of(node)
        await section.__aenter__()
        sections.append(section)

    async def _backup_action(
        self,
        kind: str,
        args: Mapping[str, Any],
        txn: Transaction | None,
        sections: list[contextlib.AbstractAsyncContextManager[None]],
    ) -> Job:
        if kind == "blockdev-backup":
            source = self.graph.lookup(args["device"])
            target = self.graph.lookup(args["target"])
            await self._drain_users(source, sections)
            return self._backup_common(args, source, target, txn, None, zero_target=False)
        source = self.graph.lookup(args["device"])
        await self._drain_users(source, sections)
        mode = args.get("mode", "absolute-paths")
        fmt: str | None = args.get("format")
        if fmt is None and mode != "existing":
            fmt = source.driver
        _busy(source)
        filename: str = args["target"]
        sync = args["sync"]
        if mode != "existing":
            assert fmt is not None
            self._check_create_format(fmt)
            if sync == "none":
                raise QMPError(f"Backing file not supported for file format '{fmt}'")
            await self.graph.create_file(filename, source.size)
        ref = self._open_target(filename, fmt, None, {"discard": "unmap", "detect-zeroes": "unmap"})
        try:
            return self._backup_common(
                args, source, ref.node, txn, ref, zero_target=mode != "existing"
            )
        except BaseException:
            ref.release()
            raise

    def _backup_common(
        self,
        args: Mapping[str, Any],
        source: BlockNode,
        target: BlockNode,
        txn: Transaction | None,
        target_ref: NodeReference | None,
        *,
        zero_target: bool,
    ) -> Job:
        sync: str = args["sync"]
        bitmap = args.get("bitmap")
        bitmap_mode = args.get("bitmap-mode")
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
        if args.get("compress", False):
            # QEMU names the target's BlockBackend, which has no name here.
            raise QMPError("Compression is not supported for this drive ")
        _busy(source)
        _busy(target)
        if self._backup_sources[target]:
            raise QMPError(
                f"Could not create node: Permission conflict on node '{target.node_name}': "
                "permissions 'write' are both required by a backup job and unshared "
                "by the filter of another backup job"
            )
        perf: Mapping[str, Any] = args.get("x-perf") or {}
        if not 1 <= perf.get("max-workers", 64) <= _INT_MAX:
            raise QMPError(f"max-workers must be between 1 and {_INT_MAX}")
        if perf.get("max-chunk", 0) < 0:
            raise QMPError("max-chunk must be zero (which means no limit) or positive")
        if source.size != target.size:
            raise QMPError("Source and target image have different sizes")
        if target.read_only:
            raise QMPError("Could not create node: Block node is read-only")
        driver = BackupDriver(
            source,
            target,
            cast(BackupSync, "full" if sync == "top" else sync),
            zero_target=zero_target,
            clock=self.jobs.clock,
            executor=self.graph.executor,
            on_source_error=args.get("on-source-error", "report"),
            on_target_error=args.get("on-target-error", "report"),
        )
        job = self.jobs.create(
            args.get("job-id", ""),
            driver,
            txn=txn,
            speed=args.get("speed", 0),
            auto_finalize=args.get("auto-finalize", True),
            auto_dismiss=args.get("auto-dismiss", True),
        )
        if target_ref is not None:
            driver.hold(target_ref.release)
        driver.hold(self.graph.reference(source).release)
        driver.hold(target.block_job("backup").release)
        self._mark(self._filtered, source, driver)
        self._mark(self._filtered, target, driver)
        self._mark(self._backup_sources, source, driver)
        return job

    # ------------------------------------------------------------- mirror

    def blockdev_mirror(self, args: Mapping[str, Any]) -> None:
        """``blockdev-mirror``.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        source = self._root_node(args["device"])
        target = self.graph.lookup(args["target"])
        self._mirror_common(args, source, target, None, zero_target=False)

    async def drive_mirror(self, args: Mapping[str, Any]) -> None:
        """``drive-mirror``: creates the target file unless ``mode`` is existing.

        :raise QMPError: QEMU's texts, in QEMU's order.
        """
        source = self._root_node(args["device"])
        _busy(source)
        mode = args.get("mode", "absolute-paths")
        fmt: str | None = args.get("format")
        if fmt is None and mode != "existing":
            fmt = source.driver
        sync = args["sync"]
        if args.get("replaces") is not None and args.get("node-name") is None:
            raise QMPError("a node-name must be provided when replacing a named node of the graph")
        filename: str = args["target"]
        if mode != "existing":
            assert fmt is not None
            self._check_create_format(fmt)
            if sync == "none":
                raise QMPError(f"Backing file not supported for file format '{fmt}'")
            await self.graph.create_file(filename, source.size)
        ref = self._open_target(filename, fmt, args.get("node-name"), {})
        try:
            self._mirror_common(args, source, ref.node, ref, zero_target=mode != "existing")
        except BaseException:
            ref.release()
            raise

    def _mirror_common(
        self,
        args: Mapping[str, Any],
        source: BlockNode,
        target: BlockNode,
        target_ref: NodeReference | None,
        *,
        zero_target: bool,
    ) -> Job:
        granularity = args.get("granularity", 0)
        if granularity and not 512 <= granularity <= 64 << 20:
            raise QMPError("Parameter 'granularity' expects a value in range [512B, 64MB]")
        if granularity & (granularity - 1):
            raise QMPError("Parameter 'granularity' expects a power of 2")
        _busy(source)
        _busy(target)
        replaces = args.get("replaces")
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
        sync = args["sync"]
        if sync in ("incremental", "bitmap"):
            raise QMPError(f"Sync mode '{sync}' not supported")
        if args.get("buf-size", 0) < 0:
            raise QMPError("Invalid parameter 'buf-size'")
        if source is target:
            raise QMPError("Can't mirror node into itself")
        # With no guest writes, "none" has nothing to copy. On a zeroed target
        # QEMU's mirror marks only allocated blocks dirty, and a null-co
        # source without read-zeroes has none.
        copy_all = sync != "none" and not (zero_target and _unallocated(source))
        driver = MirrorDriver(
            source,
            target,
            copy_all=copy_all,
            zero_target=zero_target,
            clock=self.jobs.clock,
            executor=self.graph.executor,
            on_source_error=cast(OnError, args.get("on-source-error", "report")),
            on_target_error=cast(OnError, args.get("on-target-error", "report")),
        )
        job = self.jobs.create(
            args.get("job-id", ""),
            driver,
            speed=args.get("speed", 0),
            auto_finalize=args.get("auto-finalize", True),
            auto_dismiss=args.get("auto-dismiss", True),
        )
        if target.read_only:
            # The job exists before it asks for write access to its target.
            self.jobs.discard(job)
            raise QMPError("Block node is read-only")
        if self._backup_sources[target]:
            # A running backup's filter does not share writes to its source.
            # QEMU names that filter by its generated node name; we have none.
            self.jobs.discard(job)
            raise QMPError(
                f"Permission conflict on node '{target.node_name}': permissions 'write' are "
                f"both required by an unnamed block device (uses node '{target.node_name}' "
                "as 'root' child) and unshared by the filter of a backup job"
            )
        if target_ref is not None:
            driver.hold(target_ref.release)
        driver.hold(source.block_job("mirror").release)
        driver.hold(target.block_job("mirror").release)
        self._attach_backend(target, driver)
        self._mark(self._filtered, source, driver)
        self.jobs.start(job)
        return job

    # ------------------------------------------------------------- create

    def blockdev_create(self, job_id: str, options: Mapping[str, Any]) -> None:
        """``blockdev-create``: a ``create`` job (auto-dismiss off, no BLOCK_JOB_* events).

        :raise QMPError: "Driver does not support blockdev-create", a bad
            preallocation, or a job id error.
        """
        if options["driver"] != "file":
            raise QMPError("Driver does not support blockdev-create")
        preallocation = options.get("preallocation", "off")
        if preallocation not in PREALLOCATION_MODES:
            raise QMPError(f"Parameter 'preallocation' does not accept value '{preallocation}'")
        driver = CreateDriver(self.graph, options["filename"], options["size"], preallocation)
        job = self.jobs.create(job_id, driver, auto_finalize=True, auto_dismiss=False)
        self.jobs.start(job)
