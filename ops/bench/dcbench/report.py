"""Figures: each is measured over several runs and reported as median [min–max].

A figure may name a *reference* figure (pgbench's physical limit for
throughput and latency, the at-rest value for memory); its *ratio* is
``median / reference median``. A figure may also carry the same workload run
on DBOS Transact; ``dbos_ratio`` is ``durable-cluster median / DBOS median``.
Targets (DESIGN §7) are printed and checked; they are never tuned here.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

RatioKind = Literal["percent", "times"]
Subject = Literal["value", "ratio", "dbos_ratio"]


@dataclass(frozen=True)
class Goal:
    """``subject op bound``, e.g. ``Goal("ratio", ">=", 0.40)``."""

    subject: Subject
    op: Literal[">=", "<="]
    bound: float

    def met(self, value: float | None) -> bool | None:
        if value is None or math.isnan(value):
            return None
        return value >= self.bound if self.op == ">=" else value <= self.bound


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    reference: str | None = None
    ratio_kind: RatioKind | None = None
    target: str = ""
    goals: tuple[Goal, ...] = ()
    runs: list[float] = field(default_factory=list)
    dbos: list[float] | None = None
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, value: float, **details: Any) -> None:
        self.runs.append(float(value))
        if details:
            self.details.append(details)


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float

    @staticmethod
    def of(values: list[float]) -> Summary | None:
        if not values:
            return None
        return Summary(statistics.median(values), min(values), max(values))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class Results:
    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.meta: dict[str, Any] = {}
        self.errors: list[dict[str, str]] = []
        self.dbos: dict[str, Any] = {"requested": False, "available": False, "reason": "not requested"}

    def define(self, figure: Figure) -> Figure:
        return self.figures.setdefault(figure.key, figure)

    def get(self, key: str) -> Figure:
        return self.figures[key]

    def summary(self, key: str) -> Summary | None:
        figure = self.figures.get(key)
        return Summary.of(figure.runs) if figure else None

    def ratio(self, figure: Figure) -> float | None:
        mine = Summary.of(figure.runs)
        ref = self.summary(figure.reference) if figure.reference else None
        if mine is None or ref is None or ref.median == 0:
            return None
        return mine.median / ref.median

    def dbos_ratio(self, figure: Figure) -> float | None:
        mine = Summary.of(figure.runs)
        theirs = Summary.of(figure.dbos or [])
        if mine is None or theirs is None or theirs.median == 0:
            return None
        return mine.median / theirs.median

    def target_met(self, figure: Figure) -> bool | None:
        if not figure.goals:
            return None
        mine = Summary.of(figure.runs)
        subjects: dict[str, float | None] = {
            "value": mine.median if mine else None,
            "ratio": self.ratio(figure),
            "dbos_ratio": self.dbos_ratio(figure),
        }
        verdicts = [goal.met(subjects[goal.subject]) for goal in figure.goals]
        if any(v is False for v in verdicts):
            return False
        if any(v is None for v in verdicts):
            return None
        return True

    # -- output ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for key, figure in self.figures.items():
            mine = Summary.of(figure.runs)
            ref = self.summary(figure.reference) if figure.reference else None
            theirs = Summary.of(figure.dbos or [])
            figures[key] = {
                "label": figure.label,
                "unit": figure.unit,
                "runs": figure.runs,
                "median": mine.median if mine else None,
                "min": mine.low if mine else None,
                "max": mine.high if mine else None,
                "reference": (
                    {"figure": figure.reference, "median": ref.median if ref else None}
                    if figure.reference
                    else None
                ),
                "ratio": self.ratio(figure),
                "ratio_kind": figure.ratio_kind,
                "target": figure.target or None,
                "target_met": self.target_met(figure),
                "dbos": (
                    {"runs": figure.dbos, "median": theirs.median, "min": theirs.low, "max": theirs.high}
                    if theirs
                    else None
                ),
                "dbos_ratio": self.dbos_ratio(figure),
                "details": figure.details,
            }
        return {**self.meta, "dbos": self.dbos, "errors": self.errors, "figures": figures}

    def write_json(self, path: str) -> None:
        with open(path, "w") as out:
            json.dump(self.to_json(), out, indent=2)
            out.write("\n")

    def table(self) -> str:
        with_dbos = bool(self.dbos.get("requested"))
        header = ["figure", "durable-cluster", "reference", "ratio", "target"]
        if with_dbos:
            header.append("DBOS Transact")
        rows = [header]
        for figure in self.figures.values():
            mine = Summary.of(figure.runs)
            row = [figure.label, cell(mine, figure.unit)]
            if figure.reference:
                ref_figure = self.figures.get(figure.reference)
                ref = self.summary(figure.reference)
                ref_unit = ref_figure.unit if ref_figure else ""
                row.append(cell(ref, ref_unit, ranged=False))
            else:
                row.append("")
            row.append(ratio_text(self.ratio(figure), figure.ratio_kind))
            met = self.target_met(figure)
            mark = {True: " ✓", False: " ✗", None: ""}[met] if figure.target else ""
            row.append(f"{figure.target}{mark}")
            if with_dbos:
                theirs = Summary.of(figure.dbos or [])
                text = cell(theirs, figure.unit) if theirs else ""
                ratio = self.dbos_ratio(figure)
                if ratio is not None:
                    text += f" (dc/DBOS {ratio:.2f}×)"
                row.append(text)
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for number, row in enumerate(rows):
            lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
            if number == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def number(value: float) -> str:
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(summary: Summary | None, unit: str, *, ranged: bool = True) -> str:
    if summary is None:
        return "n/a"
    text = number(summary.median)
    if ranged and summary.low != summary.high:
        text += f" [{number(summary.low)}–{number(summary.high)}]"
    return f"{text} {unit}".rstrip()


def ratio_text(ratio: float | None, kind: RatioKind | None) -> str:
    if ratio is None or kind is None:
        return ""
    if kind == "percent":
        return f"{ratio * 100:.1f}%"
    return f"{ratio:.2f}×"
