"""The benchmark suite runs end to end in its smoke mode (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["BENCH_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| metric | unit | qmpjobd median [min–max] |" in proc.stdout  # noqa: RUF001
    for section in ("1. Round trip", "2. Pipelined throughput", "3. Connect", "8. Memory"):
        assert section in proc.stdout
    text = out.read_text()
    assert text.startswith("# Benchmark results")
    assert "- command: `python -m bench --smoke --out " in text
