"""Several monitors at once, checked against a model of the daemon's books.

Each test runs a batch of seeded interleavings (see
:mod:`tests.support.concurrency_model`) on one in-process daemon. CI runs a bounded
number; a longer run:

    QMPJOBD_MODEL_RUNS=2000 QMPJOBD_MODEL_SEED=12345 pytest tests/test_concurrency_model.py

or ``python -m tests.support.concurrency_model --runs 5000`` (a random first seed,
printed). A failure names its seed; ``QMPJOBD_MODEL_SEED=S
QMPJOBD_MODEL_RUNS=1`` reruns that one interleaving.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from qmpjobd.app import App, Config

from .support import RELEASE
from .support.concurrency_model import (
    error_problem,
    prepare_workdir,
    quit_while_busy,
    run_batch,
    sequential_replies,
)

_RUNS_ENV = os.environ.get("QMPJOBD_MODEL_RUNS")
_SEED = int(os.environ.get("QMPJOBD_MODEL_SEED", "20261205"))
#: CI: three batches of this many, each on its own daemon and time-boxed.
_CI_BATCH = 100
_CI_BUDGET = 15.0


def _describe(seed: int) -> str:
    return (
        f"seed {seed} (rerun: QMPJOBD_MODEL_SEED={seed} QMPJOBD_MODEL_RUNS=1 "
        "pytest tests/test_concurrency_model.py)"
    )


@pytest.mark.skipif(_RUNS_ENV is not None, reason="QMPJOBD_MODEL_RUNS set: the long run instead")
@pytest.mark.parametrize("batch", range(3))
async def test_interleavings(batch: int, sock_dir: Path, tmp_path: Path) -> None:
    first = _SEED + batch * _CI_BATCH
    done = await run_batch(
        range(first, first + _CI_BATCH),
        sock_dir=sock_dir,
        workdir=tmp_path,
        time_budget=_CI_BUDGET,
        describe=_describe,
    )
    assert done >= 10


@pytest.mark.skipif(_RUNS_ENV is None, reason="set QMPJOBD_MODEL_RUNS for the long run")
@pytest.mark.timeout(0)
async def test_interleavings_long(sock_dir: Path, tmp_path: Path) -> None:
    runs = int(_RUNS_ENV or 0)
    done = await run_batch(
        range(_SEED, _SEED + runs), sock_dir=sock_dir, workdir=tmp_path, describe=_describe
    )
    assert done == runs


@pytest.mark.skipif(_RUNS_ENV is not None, reason="QMPJOBD_MODEL_RUNS set: the long run instead")
async def test_quit_while_others_act(sock_dir: Path, tmp_path: Path) -> None:
    prepare_workdir(tmp_path)
    for seed in range(_SEED, _SEED + 20):
        sockets = [sock_dir / "qmp.sock", sock_dir / "qmp2.sock"]
        app = App(Config(sockets=sockets, allow_paths=[tmp_path], qemu_version=RELEASE))
        await app.start()
        try:
            await quit_while_busy(app, seed, tmp_path)
        finally:
            await app.shutdown()


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-storage-daemon") is None, reason="no qemu-storage-daemon")
async def test_the_error_allowlist_holds_what_qemu_answers(tmp_path: Path) -> None:
    """The same random steps, one at a time, against qemu-storage-daemon 7.2:
    every error it answers must pass the allowlist the model judges with."""
    from bench.targets import TargetSpec, start

    prepare_workdir(tmp_path, clients=1)
    problems = []
    for seed in range(_SEED, _SEED + 6):
        running = start(TargetSpec("qemu", "qemu"), monitors=1)
        try:
            replies = await sequential_replies(
                running.sock(0), seed, 60, tmp_path, grouped_many=False
            )
        finally:
            running.stop()
        for step, reply in replies:
            if "error" in reply:
                problem = error_problem(step.command, step.args, reply["error"])
                if problem is not None:
                    problems.append(f"seed {seed}: {step.line()} => {reply['error']}: {problem}")
    assert problems == []
