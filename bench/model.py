"""What a benchmark reports: metrics, goals, results per target."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .stats import median


@dataclass(frozen=True)
class Goal:
    """A target to meet.

    ``relative``: the ratio of a target's median to the QEMU target's median
    (qmpjobd ÷ qemu-storage-daemon) must be ``<=`` or ``>=`` *limit*;
    otherwise the target's own median must be.
    """

    op: str  # "<=" or ">="
    limit: float
    relative: bool = True

    def text(self) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        return f"{sign} {self.limit:g}×" if self.relative else f"{sign} {self.limit:g}"  # noqa: RUF001

    def met(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit


@dataclass
class Metric:
    section: str
    name: str
    unit: str
    goal: Goal | None = None
    #: Per target: one value per round.
    values: dict[str, list[float]] = field(default_factory=dict)
    #: Per target: why there is no value.
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, target: str, value: float) -> None:
        self.values.setdefault(target, []).append(value)

    def skip(self, target: str, reason: str) -> None:
        if target not in self.values:
            self.missing[target] = reason

    def med(self, target: str) -> float:
        vals = self.values.get(target)
        return median(vals) if vals else math.nan


class Results:
    """All metrics in the order they were first reported."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[str, str], Metric] = {}
        self.notes: list[str] = []

    def metric(self, section: str, name: str, unit: str, goal: Goal | None = None) -> Metric:
        key = (section, name)
        if key not in self.metrics:
            self.metrics[key] = Metric(section, name, unit, goal)
        return self.metrics[key]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
