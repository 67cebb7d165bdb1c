"""A model-based concurrency checker: several monitors act on one daemon at once.

One *interleaving* connects a few raw socket clients to an in-process daemon
and runs random steps on each of them concurrently: node adds and deletes
(``null-co``, slow ``null-co`` with ``latency-ns``, ``file``, ``raw``, faulty
``raw`` over ``blkdebug``), job-starting commands (``blockdev-backup``,
``blockdev-mirror``, ``drive-backup``, ``drive-mirror``, ``blockdev-create``,
``transaction`` with backup and abort actions in either completion mode,
with speeds and error policies) and every job verb, on shared and private
nodes and jobs, sometimes pipelined; sometimes one more monitor sends a few
commands and vanishes while they run. Each client draws its steps from its
own seeded generator as it goes, mostly among the nodes and jobs that exist
at that moment; the timing is whatever the event loop makes of them, which
is the point.

What is checked (see :class:`Checker`):

* after every reply: it carries its request's id, in request order; no
  ``Internal error``; every error's class and text is one QEMU gives for
  that command (:data:`ALLOWED`, held against a live qemu-storage-daemon by
  the tests), naming what the command named, and a verb error names a state
  the verb table refuses; a job-starting command's ``created`` and
  ``running`` precede its return; and, in-process, the daemon's books
  balance: each job's pause count is its user pause plus the drained
  sections that hold it (plus one before it starts), no job is parked
  without a pause or busy while parked, every node a live job uses is still
  in the graph and open, and every node's references, job holds, backends
  and filter marks are exactly what the live jobs and the monitor account
  for;
* once every command was answered: no drained section is open and no job
  is paused except by its user;
* at the end: every job can be driven to ``null`` (cancel, finalize,
  dismiss), then every node can be deleted, and nothing is left (jobs,
  tasks, sections, nodes, marks, file descriptors); every monitor saw the
  same event stream, byte for byte (a monitor that came and went saw a
  stretch of it); each job's events are a legal path through the transition
  table, with the ``BLOCK_JOB_*`` events in their place and timestamps in
  order; nothing was logged at error level.

A failure raises :class:`ModelFailure` with the seed, the steps each client
sent and the trace of what happened, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qmpjobd.app import App
from qmpjobd.blockjobs.drivers import BackupDriver, BlockJobDriver, MirrorDriver
from qmpjobd.jobs import JobStatus, JobVerb
from qmpjobd.jobs.tables import TRANSITIONS, VERB_TABLE

from . import RELEASE

MiB = 1 << 20
#: a key the client adds to every reply it hands out (not a QMP member)
EVENTS_BEFORE = "_events_before"

# --------------------------------------------------------------------------
# The client: raw bytes, replies matched in order, every event line kept.


class ModelClient(asyncio.Protocol):
    """A monitor on raw bytes that keeps every event line as it came."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiters: deque[tuple[int, asyncio.Future[dict[str, Any]]]] = deque()
        self._sent = 0
        #: replies that did not carry the id of the request they answered
        self.misordered: list[bytes] = []
        self.event_lines: list[bytes] = []
        loop = asyncio.get_running_loop()
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def connect(cls, path: str, name: str) -> ModelClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_unix_connection(lambda: cls(name), path)
        await asyncio.wait_for(client.greeted, 5)
        reply = await asyncio.wait_for(client.send("qmp_capabilities", None), 5)
        assert reply.get("return") == {}, reply
        # QEMU sends no event before negotiation is over (qemu.qmp fails if it sees one)
        assert reply[EVENTS_BEFORE] == 0, f"{name}: events before the negotiation reply"
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        start = 0
        while (end := buf.find(b"\r\n", start)) >= 0:
            line = buf[start : end + 2]
            start = end + 2
            if line.startswith(b'{"timestamp"'):
                self.event_lines.append(line)
            elif not self.greeted.done():
                self.greeted.set_result(None)
            elif self._waiters:
                reply = json.loads(line)
                #: how many events this monitor had when the reply came
                reply[EVENTS_BEFORE] = len(self.event_lines)
                sent, fut = self._waiters.popleft()
                if reply.pop("id", None) != sent:
                    # replies come in request order, each with its request's id
                    self.misordered.append(line)
                fut.set_result(reply)
        self._buf = buf[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def send(
        self, command: str, arguments: dict[str, Any] | None
    ) -> asyncio.Future[dict[str, Any]]:
        assert self.transport is not None
        self._sent += 1
        message: dict[str, Any] = {"execute": command, "id": self._sent}
        if arguments is not None:
            message["arguments"] = arguments
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._sent, fut))
        self.transport.write(json.dumps(message).encode())
        return fut

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return await asyncio.wait_for(self.send(command, arguments), 10)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.event_lines]

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), 2)


# --------------------------------------------------------------------------
# Errors QEMU can give, per command.

_Q = r"'(?P<a>[^']*)'"
NOT_FOUND_NODE = r"Cannot find device='(?P<a>[^']*)' nor node-name='(?P=a)'"
BUSY = r"Node '(?P<a>[^']*)' is busy: block device is in use by block job: (backup|mirror)"
JOB_ID = [rf"Invalid job ID {_Q}", rf"Job ID {_Q} already in use"]
SPEED = r"Parameter 'speed' expects a non-negative value"
CREATE_FILE = [
    r"Could not create '(?P<a>[^']*)': .+",
    # sync=none onto an existing image: its node cannot take the source as backing
    r"Driver '[\w-]+' of node '[^']*' does not support backing files",
    r"Format driver '[\w-]+' does not support image creation",
    r"Backing file not supported for file format '[\w-]+'",
]
OPEN_FILE = r"Could not open '(?P<a>[^']*)': .+"
_PARTY = (
    r"(node '[^']*' \(uses node '[^']*' as '[a-z]+' child\)"
    r"|an unnamed block device \(uses node '[^']*' as 'root' child\))"
)
#: QEMU's permission conflicts name the parties, often its generated nodes
PERMISSION = (
    r"(Could not (create|replace) node: )?Permission conflict on node '[^']*': "
    rf"permissions '[a-z ]+'(, '[a-z ]+')* are both required by {_PARTY} "
    rf"and unshared by {_PARTY}\."
)
BACKUP = [
    NOT_FOUND_NODE,
    PERMISSION,
    BUSY,
    *JOB_ID,
    SPEED,
    "Source and target image have different sizes",
    "Source and target cannot be the same",
    "Need a root block node",
    # qmpjobd words this conflict without QEMU's generated filter node names
    rf"Could not create node: Permission conflict on node {_Q}: permissions 'write' are both "
    "required by a backup job and unshared by the filter of another backup job",
]
MIRROR = [
    NOT_FOUND_NODE,
    PERMISSION,
    # qmpjobd's wording again: QEMU names the backup's filter node
    rf"Permission conflict on node {_Q}: permissions 'write' are both required by an unnamed "
    r"block device \(uses node '(?P=a)' as 'root' child\) and unshared by the filter of a "
    "backup job",
    BUSY,
    *JOB_ID,
    SPEED,
    "Need a root block node",
    "Can't mirror node into itself",
]
VERB = (
    r"Job (?P<a>'[^']*') in state '(?P<state>[a-z]+)' "
    r"cannot accept command verb '(?P<verb>[a-z-]+)'"
)
JOB_LOOKUP = "Job not found"
BLOCK_LOOKUP = rf"Block job {_Q} not found"
PAUSE = [VERB, "Job is already paused"]
RESUME = [VERB, "Can't resume a job that was not paused"]
COMPLETE = [VERB, rf"The active block job {_Q} cannot be completed"]
CANCEL = [VERB, rf"The block job for device {_Q} is currently paused"]

#: command -> regexes of the error texts QEMU 7.2 can answer it with.
ALLOWED: dict[str, list[str]] = {
    "blockdev-add": [rf"Duplicate nodes with node-name={_Q}", OPEN_FILE, NOT_FOUND_NODE],
    "blockdev-del": [
        rf"Failed to find node with node-name={_Q}",
        r"Node (?P<a>\S+) is in use",
        BUSY,
        r"Node (?P<a>\S+) is not owned by the monitor",
        r"Block device (?P<a>\S+) is in use",
    ],
    "blockdev-backup": BACKUP,
    "drive-backup": [*BACKUP, *CREATE_FILE, OPEN_FILE],
    "blockdev-mirror": MIRROR,
    "drive-mirror": [*MIRROR, *CREATE_FILE, OPEN_FILE],
    "transaction": [
        *BACKUP,
        *CREATE_FILE,
        OPEN_FILE,
        "Transaction aborted using Abort action",
    ],
    "blockdev-create": JOB_ID,
    "job-pause": [JOB_LOOKUP, *PAUSE],
    "job-resume": [JOB_LOOKUP, *RESUME],
    "job-cancel": [JOB_LOOKUP, VERB],
    "job-complete": [JOB_LOOKUP, *COMPLETE],
    "job-finalize": [JOB_LOOKUP, VERB],
    "job-dismiss": [JOB_LOOKUP, VERB],
    "block-job-pause": [BLOCK_LOOKUP, *PAUSE],
    "block-job-resume": [BLOCK_LOOKUP, *RESUME],
    "block-job-cancel": [BLOCK_LOOKUP, *CANCEL],
    "block-job-complete": [BLOCK_LOOKUP, *COMPLETE],
    "block-job-finalize": [BLOCK_LOOKUP, VERB],
    "block-job-dismiss": [BLOCK_LOOKUP, VERB],
    "block-job-set-speed": [BLOCK_LOOKUP, VERB, SPEED],
    "query-jobs": [],
    "query-block-jobs": [],
    "query-named-block-nodes": [],
    "query-version": [],
}
_COMPILED = {cmd: [re.compile(p) for p in pats] for cmd, pats in ALLOWED.items()}

#: the verb each command applies, for the verb table check of a verb error
VERB_OF: dict[str, JobVerb] = {
    "job-pause": JobVerb.PAUSE,
    "block-job-pause": JobVerb.PAUSE,
    "job-resume": JobVerb.RESUME,
    "block-job-resume": JobVerb.RESUME,
    "job-cancel": JobVerb.CANCEL,
    "block-job-cancel": JobVerb.CANCEL,
    "job-complete": JobVerb.COMPLETE,
    "block-job-complete": JobVerb.COMPLETE,
    "job-finalize": JobVerb.FINALIZE,
    "block-job-finalize": JobVerb.FINALIZE,
    "job-dismiss": JobVerb.DISMISS,
    "block-job-dismiss": JobVerb.DISMISS,
    "block-job-set-speed": JobVerb.SET_SPEED,
    # job-starting commands set the speed of the job they create
    "blockdev-backup": JobVerb.SET_SPEED,
    "drive-backup": JobVerb.SET_SPEED,
    "blockdev-mirror": JobVerb.SET_SPEED,
    "drive-mirror": JobVerb.SET_SPEED,
    "transaction": JobVerb.SET_SPEED,
}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def error_problem(command: str, args: dict[str, Any] | None, error: dict[str, Any]) -> str | None:
    """Why an error reply is not one QEMU can give for ``command``, or None."""
    cls, desc = error.get("class"), error.get("desc", "")
    if "Internal error" in desc:
        return "Internal error"
    for pattern in _COMPILED.get(command, ()):
        m = pattern.fullmatch(desc)
        if m is None:
            continue
        want = "DeviceNotActive" if pattern.pattern == BLOCK_LOOKUP else "GenericError"
        if cls != want:
            return f"class {cls}, QEMU gives {want} for this text"
        groups = m.groupdict()
        named = groups.get("a")
        if named is not None:
            named = named.strip("'")
            if named not in set(_strings(args)) and not named.startswith("#"):
                return f"the text names {named!r}, which the command did not name"
        if groups.get("verb") is not None:
            verb = groups["verb"]
            expect = VERB_OF.get(command)
            if expect is None or verb != expect.value:
                return f"verb {verb!r} is not what {command} applies"
            try:
                state = JobStatus(groups["state"])
            except ValueError:
                return f"no such job status {groups['state']!r}"
            if state in VERB_TABLE[JobVerb(verb)]:
                return f"the verb table allows {verb!r} in {state.value!r}"
        return None
    return f"not an error QEMU gives for {command}"


# --------------------------------------------------------------------------
# Scripts.


@dataclass
class Step:
    command: str
    args: dict[str, Any] | None
    #: send the next step without waiting for this reply
    pipelined: bool = False
    #: seconds to wait before sending (0: none, <0: one loop iteration)
    delay: float = 0.0
    #: a file to create (path, size) before sending (mode=existing targets)
    prepare: tuple[str, int] | None = None

    def line(self) -> str:
        return f"{self.command} {json.dumps(self.args) if self.args is not None else ''}".strip()


class View(Protocol):
    """What exists right now, for scripts that pick mostly real names."""

    def nodes(self) -> set[str]: ...

    def idle_nodes(self) -> set[str]: ...

    #: (id, status, paused by its user) of every job
    def jobs(self) -> list[tuple[str, str, bool]]: ...


class AppView:
    """The view of an in-process daemon."""

    def __init__(self, app: App) -> None:
        self.app = app

    def nodes(self) -> set[str]:
        return set(self.app.graph._nodes)

    def idle_nodes(self) -> set[str]:
        service = block_job_service(self.app)
        return {
            name
            for name, node in self.app.graph._nodes.items()
            if not node._blockers
            and not node.parent_count
            and not service._filtered[node]
            and node.size == MiB
        }

    def jobs(self) -> list[tuple[str, str, bool]]:
        return [(j.id, j.status.value, j.user_paused) for j in self.app.jobs._jobs.values()]


class QueryView:
    """The view of any server, as its last queries showed it."""

    def __init__(self) -> None:
        self._nodes: set[str] = set()
        self._jobs: list[tuple[str, str, bool]] = []

    async def refresh(self, client: ModelClient) -> None:
        nodes = (await client.execute("query-named-block-nodes"))["return"]
        self._nodes = {n["node-name"] for n in nodes if not n["node-name"].startswith("#")}
        jobs = (await client.execute("query-jobs"))["return"]
        block = {b["device"]: b for b in (await client.execute("query-block-jobs"))["return"]}
        self._jobs = [
            (j["id"], j["status"], bool(block.get(j["id"], {}).get("paused"))) for j in jobs
        ]

    def nodes(self) -> set[str]:
        return self._nodes

    def idle_nodes(self) -> set[str]:
        return self._nodes

    def jobs(self) -> list[tuple[str, str, bool]]:
        return self._jobs


@dataclass
class Pools:
    shared_nodes: list[str]
    private_nodes: list[list[str]]
    shared_jobs: list[str]
    private_jobs: list[list[str]]


class ScriptMaker:
    """Random scripts over shared and private node names and job ids.

    Scripts are made round-robin over the clients, and names are picked
    mostly among what the scripts so far believe exists, so that commands
    mostly meet real nodes and jobs; the rest meet whatever is there.
    """

    def __init__(
        self,
        rng: random.Random,
        clients: int,
        workdir: Path,
        tag: str,
        app: App | None = None,
        view: View | None = None,
    ) -> None:
        self.rng = rng
        self.workdir = workdir
        self.tag = tag
        self.view = view if view is not None else AppView(app) if app is not None else None
        self.pools = Pools(
            shared_nodes=[f"s{i}" for i in range(4)],
            private_nodes=[[f"p{k}{x}" for x in "abc"] for k in range(clients)],
            shared_jobs=[f"sj{i}" for i in range(3)],
            private_jobs=[[f"p{k}j{i}" for i in range(3)] for k in range(clients)],
        )
        self._files = 0
        #: grouped transactions with several actions (not against QEMU 7.2)
        self.grouped_many = True

    # names: mostly what exists right now

    def _alive(self) -> set[str]:
        return set() if self.view is None else self.view.nodes()

    def _live_jobs(self) -> list[str]:
        return [] if self.view is None else [j[0] for j in self.view.jobs()]

    def _mine(self, k: int) -> list[str]:
        mine = set(self.pools.shared_nodes) | set(self.pools.private_nodes[k])
        return sorted(self._alive() & mine)

    def node(self, k: int) -> str:
        rng = self.rng
        mine = self._mine(k)
        if mine and rng.random() < 0.85:
            return rng.choice(mine)
        r = rng.random()
        if r < 0.45:
            return rng.choice(self.pools.shared_nodes)
        if r < 0.95 or len(self.pools.private_nodes) == 1:
            return rng.choice(self.pools.private_nodes[k])
        if r < 0.98:
            return rng.choice(rng.choice(self.pools.private_nodes))
        return "nonode"

    def _idle(self, k: int) -> list[str]:
        """This client's nodes that no job or node uses right now, of 1 MiB."""
        mine = set(self.pools.shared_nodes) | set(self.pools.private_nodes[k])
        return sorted(n for n in (self.view.idle_nodes() if self.view else ()) if n in mine)

    def free_node(self, k: int) -> str:
        """A name to add: mostly one not in use."""
        pool = self.pools.shared_nodes + self.pools.private_nodes[k]
        alive = self._alive()
        free = [n for n in pool if n not in alive]
        return self.rng.choice(free) if free and self.rng.random() < 0.9 else self.node(k)

    def job(self, k: int) -> str:
        rng = self.rng
        live = self._live_jobs()
        if live and rng.random() < 0.85:
            return rng.choice(live)
        r = rng.random()
        if r < 0.4:
            return rng.choice(self.pools.shared_jobs)
        if r < 0.92:
            return rng.choice(self.pools.private_jobs[k])
        if r < 0.98:
            return rng.choice(rng.choice(self.pools.private_jobs))
        return "nojob"

    def new_job(self, k: int) -> str:
        pool = self.pools.shared_jobs + self.pools.private_jobs[k]
        live = set(self._live_jobs())
        free = [j for j in pool if j not in live]
        return self.rng.choice(free) if free and self.rng.random() < 0.85 else self.job(k)

    def new_file(self) -> str:
        self._files += 1
        return str(self.workdir / f"t{self.tag}-{self._files}.img")

    def node_file(self, name: str) -> str:
        return str(self.workdir / f"node-{name}.img")

    # commands

    def job_options(self, k: int, args: dict[str, Any]) -> dict[str, Any]:
        args["job-id"] = self.new_job(k)
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            args["speed"] = rng.choice([256 * 1024, 1 * MiB])
        elif r < 0.28:
            args["speed"] = -1
        if rng.random() < 0.25:
            args["auto-finalize"] = False
        if rng.random() < 0.25:
            args["auto-dismiss"] = False
        for side in ("on-source-error", "on-target-error"):
            if rng.random() < 0.2:
                args[side] = rng.choice(["report", "stop", "enospc"])
        return args

    def two_nodes(self, k: int) -> tuple[str, str]:
        """A source and a target, mostly two different nodes."""
        device = self.node(k)
        for _ in range(3 if self.rng.random() < 0.9 else 0):
            target = self.node(k)
            if target != device:
                return device, target
        return device, self.node(k)

    def backup_args(self, k: int) -> dict[str, Any]:
        sync = "none" if self.rng.random() < 0.25 else "full"
        device, target = self.two_nodes(k)
        return self.job_options(k, {"device": device, "target": target, "sync": sync})

    def drive_args(self, k: int, mirror: bool) -> tuple[dict[str, Any], tuple[str, int] | None]:
        target = self.new_file()
        args: dict[str, Any] = {"device": self.node(k), "target": target, "sync": "full"}
        prepare = None
        if self.rng.random() < 0.3:
            args["mode"] = "existing"
            if self.rng.random() < 0.9:
                prepare = (target, self.rng.choice([MiB, MiB, MiB, 2 * MiB]))
        else:
            args["format"] = "raw"
        if self.rng.random() < (0.2 if mirror else 0.1):
            args["sync"] = "none"
        return self.job_options(k, args), prepare

    def add(self, k: int) -> Step:
        rng = self.rng
        child = self.node(k)
        name = self.free_node(k)
        kind = rng.random()
        args: dict[str, Any]
        if kind < 0.72:
            args = {"driver": "null-co", "node-name": name, "size": MiB}
            lat = rng.random()
            if lat < 0.2:
                args["latency-ns"] = 200_000
            elif lat < 0.35:
                args["latency-ns"] = 2_000_000
            elif lat < 0.45:
                args["latency-ns"] = 20_000_000
            if rng.random() < 0.06:
                args["size"] = 2 * MiB
        elif kind < 0.87:
            args = {"driver": "file", "node-name": name, "filename": self.node_file(name)}
        elif kind < 0.94:
            # a faulty node: raw over blkdebug over null-co, failing reads or writes
            rule: dict[str, Any] = {
                "event": rng.choice(["read_aio", "write_aio"]),
                "errno": rng.choice([5, 28]),
            }
            if rng.random() < 0.5:
                rule["once"] = True
            image = {"driver": "null-co", "size": MiB}
            args = {
                "driver": "raw",
                "node-name": name,
                "file": {"driver": "blkdebug", "inject-error": [rule], "image": image},
            }
        else:
            args = {"driver": "raw", "node-name": name, "file": child}
        return Step("blockdev-add", args)

    def step(self, k: int) -> Step:
        rng = self.rng
        r = rng.random()
        prepare = None
        args: dict[str, Any] | None
        if r < 0.18:
            step = self.add(k)
            command, args = step.command, step.args
        elif r < 0.26:
            command, args = "blockdev-del", {"node-name": self.node(k)}
        elif r < 0.40:
            command, args = "blockdev-backup", self.backup_args(k)
        elif r < 0.47:
            command = "blockdev-mirror"
            device, target = self.two_nodes(k)
            sync = rng.choice(["full", "full", "none"])
            args = self.job_options(k, {"device": device, "target": target, "sync": sync})
        elif r < 0.51:
            command = "drive-backup"
            args, prepare = self.drive_args(k, mirror=False)
        elif r < 0.55:
            command = "drive-mirror"
            args, prepare = self.drive_args(k, mirror=True)
        elif r < 0.63:
            command = "transaction"
            actions: list[dict[str, Any]] = []
            # mostly on idle nodes, each used once, so that whole transactions succeed
            idle = self._idle(k)
            rng.shuffle(idle)
            count = rng.choice([1, 2, 2, 3])
            if rng.random() < 0.7:
                count = max(1, min(count, len(idle) // 2))
            for _ in range(count):
                a = rng.random()
                if a < 0.85:
                    data = self.backup_args(k)
                    if len(idle) >= 2 and rng.random() < 0.7:
                        data["device"], data["target"] = idle.pop(), idle.pop()
                    actions.append({"type": "blockdev-backup", "data": data})
                elif a < 0.93 and prepare is None:
                    data, prepare = self.drive_args(k, mirror=False)
                    actions.append({"type": "drive-backup", "data": data})
                else:
                    actions.append({"type": "abort", "data": {}})
            args = {"actions": actions}
            # QEMU 7.2 never answers a grouped transaction that fails after
            # creating two jobs; against QEMU, grouped ones have one action.
            if rng.random() < 0.5 and (self.grouped_many or len(actions) == 1):
                args["properties"] = {"completion-mode": "grouped"}
        elif r < 0.65:
            command = "blockdev-create"
            args = {
                "job-id": self.new_job(k),
                "options": {"driver": "file", "filename": self.new_file(), "size": MiB},
            }
        elif r < 0.97:
            command, args = self.verb(k)
        else:
            command = rng.choice(["query-jobs", "query-block-jobs", "query-named-block-nodes"])
            args = None
        delay = rng.choice([0.0, 0.0, -1.0, 0.0005, 0.002])
        return Step(command, args, pipelined=rng.random() < 0.1, delay=delay, prepare=prepare)

    def job_for(self, k: int, verb: str) -> str:
        """Mostly a job the verb can act on right now, if there is one."""
        if self.view is not None and self.rng.random() < 0.6:
            fits: dict[str, Callable[[str, bool], bool]] = {
                "resume": lambda status, paused: paused,
                "complete": lambda status, paused: status in ("ready", "standby"),
                "finalize": lambda status, paused: status == "pending",
                "dismiss": lambda status, paused: status == "concluded",
            }
            fit = fits.get(verb)
            if fit is not None:
                jobs = [job for job, status, paused in self.view.jobs() if fit(status, paused)]
                if jobs:
                    return self.rng.choice(jobs)
        return self.job(k)

    def verb(self, k: int) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        verb = rng.choice(
            [
                "pause",
                "resume",
                "resume",
                "cancel",
                "complete",
                "finalize",
                "dismiss",
                "set-speed",
                "block-cancel",
            ]
        )
        job = self.job_for(k, verb)
        family = "block-job-" if rng.random() < 0.4 else "job-"
        if verb == "set-speed":
            speed = rng.choice([0, 0, 512 * 1024, 4 * MiB, -1])
            return "block-job-set-speed", {"device": job, "speed": speed}
        if verb == "block-cancel":
            args: dict[str, Any] = {"device": job}
            if rng.random() < 0.5:
                args["force"] = rng.random() < 0.5
            return "block-job-cancel", args
        if family == "block-job-" and verb in ("pause", "resume", "complete"):
            return f"block-job-{verb}", {"device": job}
        if family == "block-job-" and verb in ("finalize", "dismiss"):
            return f"block-job-{verb}", {"id": job}
        return f"job-{verb}", {"id": job}


# --------------------------------------------------------------------------
# Checks.


class ModelFailure(AssertionError):
    pass


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def block_job_service(app: App) -> Any:
    """The BlockJobService the command handlers share (it keeps the filter marks)."""
    handler = inspect.unwrap(app.command_table._commands["blockdev-backup"].handler)
    return inspect.getclosurevars(handler).nonlocals["service"]


def drain_sections(app: App) -> list[Any]:
    """The open drained sections of the job manager."""
    sections = app.jobs._drain_sections
    return list(sections.values()) if isinstance(sections, dict) else list(sections)


def _section_jobs(section: Any) -> list[Any]:
    return list(getattr(section, "jobs", ()))


def _open_fds() -> set[int]:
    return (
        {int(fd) for fd in os.listdir("/proc/self/fd")} if os.path.isdir("/proc/self/fd") else set()
    )


def _describe_fd(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return f"{fd} (gone)"


class Checker:
    """In-process invariants of the daemon's books; each returns a list of problems."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.service = block_job_service(app)

    def live_block_jobs(self) -> list[tuple[Any, BlockJobDriver]]:
        out = []
        for job in self.app.jobs._jobs.values():
            driver = job.driver
            if isinstance(driver, BlockJobDriver) and job.status is not JobStatus.CONCLUDED:
                out.append((job, driver))
        return out

    def books(self) -> list[str]:
        problems: list[str] = []
        app = self.app
        sections = drain_sections(app)
        held: Counter[int] = Counter()
        for section in sections:
            for job in _section_jobs(section):
                held[id(job)] += 1
        for job in app.jobs._jobs.values():
            # A mirror whose run is over keeps its source drained until it
            # is finalized, as QEMU's does ("paused": true while pending).
            source = int(bool(getattr(job.driver, "_source_drained", False)))
            expected = (0 if job.started else 1) + int(job.user_paused) + held[id(job)] + source
            if job.pause_count != expected:
                problems.append(
                    f"job {job.id} ({job.status.value}): pause count {job.pause_count}, but "
                    f"user pause {int(job.user_paused)} + drained sections {held[id(job)]} + "
                    f"not started {0 if job.started else 1} + mirror source drain {source}"
                    f" = {expected}"
                )
            if job.status in (JobStatus.PAUSED, JobStatus.STANDBY):
                if job.pause_count <= 0:
                    problems.append(f"job {job.id} is {job.status.value} with pause count 0")
                if job.busy:
                    problems.append(f"job {job.id} is {job.status.value} and busy")
        graph = app.graph
        if graph._pending:
            problems.append(f"node names reserved but never opened: {sorted(graph._pending)}")
        refs: Counter[int] = Counter()
        blockers: Counter[int] = Counter()
        backends: Counter[int] = Counter()
        filtered: Counter[int] = Counter()
        sources: Counter[int] = Counter()
        for job, driver in self.live_block_jobs():
            for node in driver.nodes:
                if graph._nodes.get(node.node_name) is not node or node.closed:
                    problems.append(
                        f"job {job.id} ({job.status.value}) uses node {node.node_name}, "
                        "which is no longer in the graph"
                    )
            src, tgt = driver.source, driver.target
            if not tgt.monitor_owned:
                refs[id(tgt)] += 1  # the reference of a drive-* target it opened
            if isinstance(driver, BackupDriver):
                refs[id(src)] += 1
                blockers[id(tgt)] += 1
                filtered[id(src)] += 1
                filtered[id(tgt)] += 1
                sources[id(src)] += 1
            elif isinstance(driver, MirrorDriver):
                blockers[id(src)] += 1
                blockers[id(tgt)] += 1
                backends[id(tgt)] += 1
                filtered[id(src)] += 1
        for name, node in graph._nodes.items():
            if node.closed:
                problems.append(f"node {name} is in the graph but closed")
            want = int(node.monitor_owned) + node.parent_count + refs[id(node)]
            if node.refcnt != want:
                problems.append(
                    f"node {name}: refcnt {node.refcnt}, expected {want} (monitor "
                    f"{int(node.monitor_owned)} + parents {node.parent_count} + job "
                    f"references {refs[id(node)]})"
                )
            if want <= 0:
                problems.append(f"node {name} is in the graph with nothing holding it")
            if len(node._blockers) != blockers[id(node)]:
                problems.append(
                    f"node {name}: {len(node._blockers)} job blockers, live jobs hold "
                    f"{blockers[id(node)]}"
                )
            if node.backends != backends[id(node)]:
                problems.append(
                    f"node {name}: {node.backends} backends, live mirrors hold {backends[id(node)]}"
                )
        for label, counter, want_counter in (
            ("filter marks", self.service._filtered, filtered),
            ("backup-source marks", self.service._backup_sources, sources),
        ):
            got = {id(n): c for n, c in counter.items() if c}
            if got != {k: v for k, v in want_counter.items() if v}:
                names = {n.node_name: c for n, c in counter.items() if c}
                problems.append(f"{label} {names} do not match the live jobs")
        return problems

    def settled(self) -> list[str]:
        """Nothing in flight: no section open, no job paused except by its user."""
        problems = []
        sections = drain_sections(self.app)
        if sections:
            problems.append(f"{len(sections)} drained sections left open with nothing in flight")
        for job in self.app.jobs._jobs.values():
            source = bool(getattr(job.driver, "_source_drained", False))
            if job.started and job.pause_count > int(source) and not job.user_paused:
                problems.append(
                    f"job {job.id} is paused (count {job.pause_count}, status "
                    f"{job.status.value}) without a user pause or an open drain"
                )
        return problems

    def empty(self) -> list[str]:
        problems = []
        app = self.app
        if app.jobs._jobs:
            problems.append(f"jobs left: {sorted(app.jobs._jobs)}")
        if app.jobs._tasks:
            problems.append(f"job tasks left: {[j.id for j in app.jobs._tasks]}")
        if drain_sections(app):
            problems.append("drained sections left open")
        if app.graph._nodes:
            problems.append(f"nodes left: {sorted(app.graph._nodes)}")
        if any(self.service._filtered.values()) or any(self.service._backup_sources.values()):
            problems.append("filter marks left")
        return problems


def event_problems(events: list[dict[str, Any]]) -> list[str]:
    """Each job's events: a legal path from created to null, BLOCK_JOB_* in place."""
    problems: list[str] = []
    status: dict[str, JobStatus] = {}
    last_block: dict[str, str] = {}
    ran: set[str] = set()
    readied: set[str] = set()
    last_stamp = (0, 0)
    for i, ev in enumerate(events):
        name, data = ev["event"], ev.get("data", {})
        stamp = (ev["timestamp"]["seconds"], ev["timestamp"]["microseconds"])
        if stamp < last_stamp:
            problems.append(f"event {i}: timestamp {stamp} before the previous {last_stamp}")
        last_stamp = stamp
        if name == "JOB_STATUS_CHANGE":
            job, new = data["id"], JobStatus(data["status"])
            old = status.get(job, JobStatus.UNDEFINED)
            if old is JobStatus.NULL:
                old = JobStatus.UNDEFINED  # the id is free again
            if new is old or new not in TRANSITIONS[old]:
                problems.append(f"event {i}: job {job}: illegal {old.value} -> {new.value}")
            pending = last_block.pop(job, None)
            if pending in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and new is not (
                JobStatus.CONCLUDED
            ):
                problems.append(f"event {i}: job {job}: {pending} not followed by concluded")
            if new is JobStatus.RUNNING:
                ran.add(job)
            if new is JobStatus.CREATED:
                ran.discard(job)
                readied.discard(job)
            status[job] = new
        elif name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_READY"):
            job = data["device"]
            st = status.get(job)
            if name == "BLOCK_JOB_READY":
                if st is not JobStatus.READY:
                    problems.append(f"event {i}: {name} for {job} in {st}")
                if job in readied:
                    problems.append(f"event {i}: a second {name} for {job}")
                readied.add(job)
            if name != "BLOCK_JOB_READY":
                if st not in (JobStatus.PENDING, JobStatus.ABORTING) or job not in ran:
                    problems.append(f"event {i}: {name} for {job} in {st}")
                if "Internal error" in str(data.get("error", "")):
                    problems.append(f"event {i}: {name} for {job}: {data['error']}")
                last_block[job] = name
        elif name == "BLOCK_JOB_PENDING" and status.get(data["id"]) is not JobStatus.PENDING:
            problems.append(f"event {i}: BLOCK_JOB_PENDING for {data['id']} not in pending")
    for job, st in status.items():
        if st is not JobStatus.NULL:
            problems.append(f"job {job} ended in {st.value}, not null")
    return problems


_STARTS = ("blockdev-backup", "drive-backup", "blockdev-mirror", "drive-mirror", "blockdev-create")


def creation_events_first(step: Step, lines: list[bytes]) -> list[str]:
    """A job-starting command's ``created`` and ``running`` precede its return."""
    if step.command in _STARTS and step.args is not None:
        ids = [step.args["job-id"]]
    elif step.command == "transaction" and step.args is not None:
        ids = [a["data"]["job-id"] for a in step.args["actions"] if a["type"] != "abort"]
    else:
        return []
    seen: dict[str, set[str]] = {}
    for line in lines:
        if b"JOB_STATUS_CHANGE" in line:
            data = json.loads(line)["data"]
            seen.setdefault(data["id"], set()).add(data["status"])
    return [
        f"{step.command} returned before job {job} showed {missing}"
        for job in ids
        for missing in ("created", "running")
        if missing not in seen.get(job, set())
    ]


def group_problems(events: list[dict[str, Any]], groups: list[tuple[int, list[str]]]) -> list[str]:
    """The jobs of a grouped transaction end as one: all succeed (every
    member pending before any concludes) or all abort.

    ``groups`` holds, per grouped transaction that succeeded, how many
    events came before its return and its jobs' ids.
    """
    problems = []
    for seen, ids in groups:
        lives: dict[str, list[tuple[int, str]]] = {}
        for job in ids:
            start = None
            for i in range(min(seen, len(events)) - 1, -1, -1):
                ev = events[i]
                if ev["event"] == "JOB_STATUS_CHANGE" and ev["data"] == {
                    "status": "created",
                    "id": job,
                }:
                    start = i
                    break
            if start is None:
                problems.append(f"grouped transaction {ids}: no created event for {job}")
                continue
            life = []
            for i in range(start, len(events)):
                ev = events[i]
                if ev["event"] == "JOB_STATUS_CHANGE" and ev["data"]["id"] == job:
                    life.append((i, ev["data"]["status"]))
                    if ev["data"]["status"] == "null":
                        break
            lives[job] = life
        aborted = sorted(
            job for job, life in lives.items() if any(s == "aborting" for _, s in life)
        )
        if aborted and len(aborted) != len(lives):
            problems.append(f"grouped transaction {ids}: {aborted} aborted, the others did not")
        if not aborted and lives:
            pending = [i for life in lives.values() for i, s in life if s == "pending"]
            concluded = [i for life in lives.values() for i, s in life if s == "concluded"]
            if len(pending) != len(lives) or (concluded and max(pending) > min(concluded)):
                problems.append(
                    f"grouped transaction {ids}: members did not finish together: {lives}"
                )
    return problems


# --------------------------------------------------------------------------
# One interleaving.


@dataclass
class Trace:
    t0: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def add(self, who: str, text: str) -> None:
        self.lines.append(f"{(time.monotonic() - self.t0) * 1000:8.2f} ms  {who}  {text}")


def _short(reply: dict[str, Any]) -> str:
    if "error" in reply:
        return f"error {reply['error'].get('class')}: {reply['error'].get('desc')}"
    text = json.dumps(reply.get("return"))
    return text if len(text) < 160 else text[:157] + "..."


class Interleaving:
    """Run one seeded interleaving against ``app``; raise :class:`ModelFailure`."""

    def __init__(
        self,
        app: App,
        seed: int,
        workdir: Path,
        *,
        clients: int | None = None,
        length: int = 10,
        describe: Callable[[int], str] = lambda seed: f"seed {seed}",
    ) -> None:
        self.app = app
        self.seed = seed
        rng = self.rng = random.Random(seed)
        self.nclients = clients if clients is not None else rng.choice([2, 3, 3, 4])
        self.workdir = workdir
        # Each client draws its steps from its own generator, as it goes,
        # from what exists at that moment.
        self.makers = [
            ScriptMaker(
                random.Random(f"{seed}/{k}"), self.nclients + 1, workdir, f"{seed}-{k}", app
            )
            for k in range(self.nclients + 1)
        ]
        self.setup = [rng.choice([1, 2, 2, 3]) for _ in range(self.nclients)]
        self.lengths = [rng.randint(length // 2, length) for _ in range(self.nclients)]
        #: the steps each client sent, in order
        self.scripts: list[list[Step]] = [[] for _ in range(self.nclients)]
        #: sometimes one more monitor sends a few commands and vanishes
        #: while they run (its replies have nowhere to go)
        self.ghost_steps = rng.randint(1, 4) if rng.random() < 0.25 else 0
        self.ghost_wait = rng.choice([0.0, 0.0005, 0.003])
        self.ghost: list[Step] = []
        self.ghost_events = b""
        #: grouped transactions that succeeded: (events before the return, job ids)
        self.groups: list[tuple[int, list[str]]] = []
        self.trace = Trace()
        self.checker = Checker(app)
        self.problems: list[str] = []
        self.describe = describe
        self.steps = 0

    def fail(self, what: str, problems: list[str]) -> None:
        scripts = "\n".join(
            f"  c{k}: " + "\n      ".join(s.line() for s in script)
            for k, script in enumerate(self.scripts)
        )
        if self.ghost:
            scripts += "\n  ghost: " + "\n      ".join(s.line() for s in self.ghost)
        trace = self.trace.lines
        if len(trace) > 200:
            trace = ["  ... (earlier lines left out)", *trace[-200:]]
        raise ModelFailure(
            f"{self.describe(self.seed)}: {what}:\n  - "
            + "\n  - ".join(problems[:20])
            + f"\nscripts ({self.nclients} clients):\n{scripts}\ntrace:\n"
            + "\n".join(trace)
        )

    def check_reply(
        self, who: str, step: Step, reply: dict[str, Any], client: ModelClient | None = None
    ) -> None:
        self.steps += 1
        seen = reply.pop(EVENTS_BEFORE, None)
        self.trace.add(who, f"{step.line()} => {_short(reply)}")
        problems = []
        if client is not None and seen is not None and "return" in reply:
            problems += creation_events_first(step, client.event_lines[:seen])
        if (
            step.command == "transaction"
            and "return" in reply
            and seen is not None
            and step.args is not None
            and (step.args.get("properties") or {}).get("completion-mode") == "grouped"
        ):
            ids = [a["data"]["job-id"] for a in step.args["actions"] if a["type"] != "abort"]
            self.groups.append((seen, ids))
        if client is not None and client.misordered:
            problems.append(f"{client.name}: replies out of order: {client.misordered}")
        if "error" in reply:
            problem = error_problem(step.command, step.args, reply["error"])
            if problem is not None:
                problems.append(f"{step.command}: {reply['error']}: {problem}")
        elif step.command == "query-jobs":
            for info in reply["return"]:
                if "Internal error" in str(info.get("error", "")):
                    problems.append(f"query-jobs shows {info}")
        problems += self.checker.books()
        if problems:
            self.fail(f"after {who}'s {step.command}", problems)

    async def run_client(self, k: int, client: ModelClient) -> None:
        who = f"c{k}"
        pending: list[tuple[Step, asyncio.Future[dict[str, Any]]]] = []

        async def collect() -> None:
            while pending:
                step, fut = pending.pop(0)
                self.check_reply(who, step, await asyncio.wait_for(fut, 10), client)

        maker = self.makers[k]
        for i in range(self.setup[k] + self.lengths[k]):
            step = maker.add(k) if i < self.setup[k] else maker.step(k)
            self.scripts[k].append(step)
            if step.delay < 0:
                await asyncio.sleep(0)
            elif step.delay > 0:
                await asyncio.sleep(step.delay)
            if step.prepare is not None:
                path, size = step.prepare
                with open(path, "wb") as f:
                    f.truncate(size)
            pending.append((step, client.send(step.command, step.args)))
            if not step.pipelined:
                await collect()
        await collect()

    async def run_ghost(self, path: str) -> None:
        ghost = await ModelClient.connect(path, "ghost")
        for _ in range(self.ghost_steps):
            step = self.makers[-1].step(self.nclients)
            self.ghost.append(step)
            if step.prepare is not None:
                with open(step.prepare[0], "wb") as f:
                    f.truncate(step.prepare[1])
            ghost.send(step.command, step.args)
            self.trace.add("ghost", f"{step.line()} (reply never read)")
        await asyncio.sleep(self.ghost_wait)
        assert ghost.transport is not None
        ghost.transport.abort()
        self.trace.add("ghost", "gone")
        self.ghost_events = b"".join(ghost.event_lines)

    async def drive_to_null(self, client: ModelClient) -> None:
        """Cancel, finalize, dismiss until no job is left."""
        deadline = time.monotonic() + 10
        while True:
            jobs = await self.execute(client, "c0/end", "query-jobs", None)
            if not jobs["return"]:
                return
            if time.monotonic() > deadline:
                self.fail("jobs cannot be driven to null", [json.dumps(jobs["return"])])
            for info in jobs["return"]:
                status, job_id = info["status"], info["id"]
                if status == "concluded":
                    await self.execute(client, "c0/end", "job-dismiss", {"id": job_id})
                elif status == "pending":
                    await self.execute(client, "c0/end", "job-finalize", {"id": job_id})
                elif status != "aborting":
                    await self.execute(client, "c0/end", "job-cancel", {"id": job_id})
            await asyncio.sleep(0.001)

    async def execute(
        self, client: ModelClient, who: str, command: str, args: dict[str, Any] | None
    ) -> dict[str, Any]:
        step = Step(command, args)
        reply = await client.execute(command, args)
        self.check_reply(who, step, reply, client)
        return reply

    async def delete_nodes(self, client: ModelClient) -> None:
        """Delete every node; with no job left only a parent node may keep one."""
        nodes: list[dict[str, Any]] = []
        for _ in range(10):
            nodes = (await self.execute(client, "c0/end", "query-named-block-nodes", None))[
                "return"
            ]
            if not nodes:
                return
            for info in nodes:
                name = info["node-name"]
                if name.startswith("#"):
                    continue
                node = self.app.graph.get(name)
                has_parent = node is not None and node.parent_count > 0
                reply = await self.execute(client, "c0/end", "blockdev-del", {"node-name": name})
                if "error" in reply and not has_parent:
                    self.fail(
                        "a node cannot be deleted once every job is gone",
                        [f"{name}: {reply['error']['desc']}"],
                    )
        self.fail(
            "nodes left that cannot be deleted",
            [json.dumps([n["node-name"] for n in nodes])],
        )

    async def run(self) -> None:
        log = _ErrorLog()
        logger = logging.getLogger("qmpjobd")
        logger.addHandler(log)
        # Monitors on every socket of the daemon share one dispatcher and one event stream.
        paths = [str(p) for p in self.app.config.sockets]
        path = paths[-1]
        fds_before = _open_fds()
        clients = [
            await ModelClient.connect(paths[k % len(paths)], f"c{k}") for k in range(self.nclients)
        ]
        try:
            self.trace.add("--", f"{self.describe(self.seed)}, {self.nclients} clients")
            runs = [self.run_client(k, c) for k, c in enumerate(clients)]
            if self.ghost_steps:
                runs.append(self.run_ghost(path))
            results = await asyncio.gather(*runs, return_exceptions=True)
            for result in results:
                if isinstance(result, ModelFailure):
                    raise result
            for k, result in enumerate(results):
                if isinstance(result, BaseException):
                    self.fail(f"client c{k} failed", [repr(result)])
            # Nothing in flight now; let wake-ups run before judging pauses.
            for _ in range(3):
                await asyncio.sleep(0)
            problems = self.checker.settled() + self.checker.books()
            # and as a client sees it: paused only by its user
            reply = await self.execute(clients[0], "c0", "query-block-jobs", None)
            for info in reply["return"]:
                job = self.app.jobs.get(info["device"])
                if job is None:
                    continue  # it ended (a pause request does not stop a run that is ending)
                # A mirror's source stays drained until it is finalized:
                # QEMU reports such a pending mirror as paused too.
                drained = info["status"] == "pending" and info["type"] == "mirror"
                if (info["paused"] or info["status"] in ("paused", "standby")) and not (
                    job.user_paused or drained
                ):
                    problems.append(f"query-block-jobs shows a job paused by nobody: {info}")
            if problems:
                self.fail("once every command was answered", problems)
            await self.drive_to_null(clients[0])
            await self.delete_nodes(clients[0])
            for _ in range(5):
                await asyncio.sleep(0)
            problems = self.checker.empty()
            if problems:
                self.fail("at the end", problems)
            # every event so far precedes these replies on every monitor
            for k, client in enumerate(clients):
                await self.execute(client, f"c{k}", "query-version", None)
            first = clients[0].event_lines
            for k, client in enumerate(clients[1:], 1):
                if client.event_lines != first:
                    diff = next(
                        (
                            i
                            for i, (a, b) in enumerate(zip(first, client.event_lines, strict=False))
                            if a != b
                        ),
                        min(len(first), len(client.event_lines)),
                    )
                    self.fail(
                        "monitors saw different event streams",
                        [
                            f"c0 saw {len(first)} events, c{k} saw {len(client.event_lines)}; "
                            f"first difference at {diff}"
                        ],
                    )
            if self.ghost_events and self.ghost_events not in b"".join(first):
                self.fail(
                    "a monitor that came and went saw events the others did not, "
                    "or not in their order",
                    [self.ghost_events.decode()[:2000]],
                )
            events = clients[0].events()
            problems = event_problems(events) + group_problems(events, self.groups)
            if problems:
                self.trace.lines += [
                    "events:",
                    *(f"  {line.decode().strip()}" for line in first),
                ]
                self.fail("events", problems)
            for client in clients:
                await client.close()
            for _ in range(100):
                leaked = _open_fds() - fds_before
                if not leaked:
                    break
                await asyncio.sleep(0.001)
            else:
                self.fail("file descriptors left open", [_describe_fd(fd) for fd in sorted(leaked)])
            if log.records:
                self.fail(
                    "the daemon logged errors",
                    [
                        f"{r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
                        for r in log.records
                    ],
                )
        finally:
            logger.removeHandler(log)
            for client in clients:
                await client.close()
            for name in os.listdir(self.workdir):
                if name.startswith(f"t{self.seed}-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.workdir / name)


async def quit_while_busy(app: App, seed: int, workdir: Path) -> None:
    """One monitor sends ``quit`` while the others are mid-script.

    The books must balance at every reply up to the end, ``quit`` must
    answer, and the daemon must then shut down within its deadlines with no
    job, task or drained section left and nothing logged at error level.
    """
    it = Interleaving(app, seed, workdir, describe=lambda s: f"quit, seed {s}")
    when = random.Random(f"{seed}/quit").choice([0.0, 0.002, 0.01, 0.03])
    log = _ErrorLog()
    logger = logging.getLogger("qmpjobd")
    logger.addHandler(log)
    paths = [str(p) for p in app.config.sockets]
    clients = [
        await ModelClient.connect(paths[k % len(paths)], f"c{k}") for k in range(it.nclients)
    ]
    quitter = await ModelClient.connect(paths[-1], "quit")
    try:

        async def send_quit() -> None:
            await asyncio.sleep(when)
            it.trace.add("quit", "quit")
            reply = await quitter.execute("quit")
            reply.pop(EVENTS_BEFORE, None)
            it.trace.add("quit", f"quit => {_short(reply)}")
            if reply != {"return": {}}:
                it.fail("quit", [json.dumps(reply)])

        runs = [it.run_client(k, c) for k, c in enumerate(clients)]
        results = await asyncio.gather(send_quit(), *runs, return_exceptions=True)
        for result in results:
            if isinstance(result, ModelFailure):
                raise result
        if isinstance(results[0], BaseException):
            it.fail("quit failed", [repr(results[0])])
        await asyncio.wait_for(app._stop.wait(), 5)
        await asyncio.wait_for(app.shutdown(), 15)
        problems = []
        if app.jobs._jobs:
            problems.append(f"jobs left: {sorted(app.jobs._jobs)}")
        if app.jobs._tasks:
            problems.append(f"job tasks left: {[j.id for j in app.jobs._tasks]}")
        if drain_sections(app):
            problems.append("drained sections left open")
        if app.server.sessions:
            problems.append(f"sessions left: {app.server.sessions}")
        problems += [r.getMessage() for r in log.records]
        if problems:
            it.fail("after quit", problems)
    finally:
        logger.removeHandler(log)
        for client in [*clients, quitter]:
            await client.close()


async def sequential_replies(
    path: str, seed: int, steps: int, workdir: Path, *, grouped_many: bool = True
) -> list[tuple[Step, dict[str, Any]]]:
    """One client runs ``steps`` random steps against any server, one at a
    time, and returns every step with its reply (to hold the error allowlist
    against what a real QEMU answers)."""
    client = await ModelClient.connect(path, "seq")
    view = QueryView()
    rng = random.Random(f"{seed}/seq")
    maker = ScriptMaker(rng, 1, workdir, f"q{seed}", view=view)
    maker.grouped_many = grouped_many
    out: list[tuple[Step, dict[str, Any]]] = []
    try:
        for i in range(steps):
            await view.refresh(client)
            step = maker.add(0) if i < 3 else maker.step(0)
            if step.prepare is not None:
                with open(step.prepare[0], "wb") as f:
                    f.truncate(step.prepare[1])
            reply = await client.execute(step.command, step.args)
            reply.pop(EVENTS_BEFORE, None)
            out.append((step, reply))
            if rng.random() < 0.3:
                await asyncio.sleep(0.002)  # let jobs move on
    finally:
        await client.close()
    return out


def prepare_workdir(workdir: Path, clients: int = 4) -> None:
    """Create the images ``file`` nodes open (one per node name, never shared)."""
    maker = ScriptMaker(random.Random(0), clients + 1, workdir, "")
    names = maker.pools.shared_nodes + [n for ns in maker.pools.private_nodes for n in ns]
    for name in [*names, "nonode"]:
        with open(maker.node_file(name), "wb") as f:
            f.truncate(MiB)


# --------------------------------------------------------------------------
# Batches, and the command line.


async def run_batch(
    seeds: Iterable[int],
    *,
    sock_dir: Path,
    workdir: Path,
    time_budget: float | None = None,
    describe: Callable[[int], str] = lambda seed: f"seed {seed}",
    progress: Callable[[int, float], None] | None = None,
    failures: list[ModelFailure] | None = None,
    clients: int | None = None,
    length: int = 10,
) -> int:
    """Run the seeds' interleavings on one daemon; return how many ran.

    Every interleaving leaves the daemon empty (that is checked), so the
    next one starts from a clean daemon. With a ``time_budget`` (seconds),
    stop early once it is spent. With a ``failures`` list, a failure is
    kept there and the next seed runs on a fresh daemon; without, it raises.
    """
    from qmpjobd.app import Config

    prepare_workdir(workdir)

    async def new_app() -> App:
        sockets = [sock_dir / "qmp.sock", sock_dir / "qmp2.sock"]
        app = App(Config(sockets=sockets, allow_paths=[workdir], qemu_version=RELEASE))
        await app.start()
        return app

    app = await new_app()
    done = 0
    t0 = time.monotonic()
    try:
        for seed in seeds:
            try:
                await Interleaving(
                    app, seed, workdir, describe=describe, clients=clients, length=length
                ).run()
            except ModelFailure as exc:
                if failures is None:
                    raise
                failures.append(exc)
                with contextlib.suppress(Exception):
                    await app.shutdown()
                app = await new_app()
            done += 1
            elapsed = time.monotonic() - t0
            if progress is not None:
                progress(done, elapsed)
            if time_budget is not None and elapsed > time_budget:
                break
    finally:
        await app.shutdown()
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.concurrency_model [--runs N] [--seed S]``: a long run."""
    import argparse
    import shutil
    import sys
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.support.concurrency_model")
    parser.add_argument("--runs", type=int, default=2000, help="interleavings (default 2000)")
    parser.add_argument(
        "--seed", type=int, default=None, help="first seed (default: random, printed)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run every seed; sum up the failures at the end"
    )
    parser.add_argument("--clients", type=int, default=None, help="clients (default 2 to 4)")
    parser.add_argument("--length", type=int, default=10, help="steps per client, at most")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seeds {seed}..{seed + args.runs - 1}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="qj-model-"))
    (tmp / "img").mkdir()

    def progress(done: int, elapsed: float) -> None:
        if done % 100 == 0:
            print(f"{done} interleavings, {done / elapsed:.1f}/s", flush=True)

    def describe(s: int) -> str:
        return f"seed {s} (rerun: python -m tests.support.concurrency_model --runs 1 --seed {s})"

    failures: list[ModelFailure] | None = [] if args.keep_going else None
    t0 = time.monotonic()
    try:
        done = asyncio.run(
            run_batch(
                range(seed, seed + args.runs),
                sock_dir=tmp,
                workdir=tmp / "img",
                describe=describe,
                progress=progress,
                failures=failures,
                clients=args.clients,
                length=args.length,
            )
        )
    except ModelFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print(f"{done} interleavings in {elapsed:.1f} s ({done / elapsed:.1f}/s)")
    if failures:
        kinds: Counter[str] = Counter()
        for failure in failures:
            lines = str(failure).splitlines()
            head = re.sub(r"^seed \d+ \([^)]*\): ", "", lines[0]) + " | " + lines[1]
            kinds[re.sub(r"\b(c\d|p\d[a-c]|s\d|p\dj\d|sj\d)\b", "X", head)] += 1
        print(f"{len(failures)} failed:")
        for kind, n in kinds.most_common():
            print(f"  {n:5d}  {kind}")
        for failure in failures[:3]:
            print(f"\n{failure}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
