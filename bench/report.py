"""The results table (Markdown) and the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import shlex
import subprocess
import sys
import time

from .model import Metric, Results
from .targets import TargetSpec


def machine() -> list[tuple[str, str]]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        qemu = subprocess.run(
            ["qemu-storage-daemon", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        qemu = "not installed"
    return [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("memory", mem),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("QEMU", qemu),
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]


def fmt(v: float) -> str:
    if math.isnan(v):
        return "—"
    a = abs(v)
    if a >= 100000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _baseline(targets: list[TargetSpec]) -> str | None:
    for t in targets:
        if t.kind == "qemu":
            return t.name
    return None


def verdict(m: Metric, target: str, baseline: str | None) -> str:
    if m.goal is None:
        return ""
    if target in m.missing or target not in m.values:
        return "n/a"
    v = m.med(target)
    if m.goal.relative:
        if baseline is None or target == baseline:
            return "" if target == baseline else "n/a"
        b = m.med(baseline)
        if math.isnan(b) or b == 0 or math.isnan(v):
            return "n/a"
        v = v / b
    if math.isnan(v):
        return "n/a"
    return "PASS" if m.goal.met(v) else "FAIL"


def table(results: Results, targets: list[TargetSpec]) -> str:
    first = targets[0].name
    baseline = _baseline(targets)
    head = ["metric", "unit"]
    for t in targets:
        head += [f"{t.name} median [min–max]"]  # noqa: RUF001
        if t.name != first:
            head.append(f"{t.name} ÷ {first}")
    head += ["goal"] + [f"{t.name}" for t in targets]
    lines = []
    section = None
    for m in results.metrics.values():
        if m.section != section:
            section = m.section
            lines.append("| **" + section + "** |" + " |" * (len(head) - 1))
        row = [m.name, m.unit]
        base = m.med(first)
        for t in targets:
            if t.name in m.values:
                vals = m.values[t.name]
                cell = fmt(m.med(t.name))
                if len(vals) > 1:
                    cell += f" [{fmt(min(vals))}–{fmt(max(vals))}]"  # noqa: RUF001
            else:
                cell = m.missing.get(t.name, "—")
            row.append(cell)
            if t.name != first:
                v = m.med(t.name)
                row.append(
                    f"{v / base:.2f}"
                    if base and not math.isnan(base) and not math.isnan(v)
                    else "—"
                )
        row.append(m.goal.text() if m.goal else "")
        row += [verdict(m, t.name, baseline) for t in targets]
        lines.append("| " + " | ".join(row) + " |")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines]
    return "\n".join(out)


def markdown(results: Results, targets: list[TargetSpec], argv: list[str], elapsed: float) -> str:
    baseline = _baseline(targets)
    parts = ["# Benchmark results", ""]
    parts += [f"- {k}: {v}" for k, v in machine()]
    parts.append(
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', '-m', 'bench', *argv])}`"
    )
    parts.append(f"- wall time: {elapsed:.0f} s")
    parts += [
        "",
        "Each cell is the median over rounds, with the range when there was more than one "
        "round; targets ran interleaved, round by round, in the same run. "
        f"Ratios are to the first target ({targets[0].name}). "
        + (
            f"Goals marked × compare a target with {baseline} (same run); other goals are absolute."  # noqa: RUF001
            if baseline
            else "Relative goals need a qemu target."
        ),
        "",
    ]
    parts.append(table(results, targets))
    if results.notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in results.notes]
    parts.append("")
    return "\n".join(parts)


def python_info() -> str:
    return sys.version.split()[0]
