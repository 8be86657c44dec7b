"""Rows of the results table and the statistics behind them (plain functions, no I/O)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table: a measured quantity, its floor and its target."""

    figure: str
    metric: str
    p50: float | None
    p95: float | None
    unit: str
    floor: str = ""  # what the figure is compared with, measured in the same run
    target: str = ""
    met: bool | None = None  # None: no target for this line
    runs: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> tuple[float, float]:
    """(median, p95) of a non-empty sample."""
    return statistics.median(values), percentile(values, 95)


def sample_row(
    figure: str,
    metric: str,
    values: Sequence[float],
    unit: str,
    *,
    floor: str = "",
    target: str = "",
    limit: float | None = None,
    at: str = "p50",
) -> Row:
    """A row from a sample; `limit` is checked against its p50 or p95 (`at`)."""
    if not values:
        return Row(figure, metric, None, None, unit, floor, target, False if limit else None, 0)
    p50, p95 = summary(values)
    checked = p50 if at == "p50" else p95
    met = None if limit is None else checked <= limit
    return Row(figure, metric, p50, p95, unit, floor, target, met, len(values))


def value_row(
    figure: str,
    metric: str,
    value: float,
    unit: str,
    *,
    floor: str = "",
    target: str = "",
    met: bool | None = None,
) -> Row:
    """A row for a single measured value (the p95 column stays empty)."""
    return Row(figure, metric, value, None, unit, floor, target, met, 1)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render_table(rows: Sequence[Row]) -> str:
    """A Markdown table, readable as plain text too."""
    header = ("figure", "metric", "p50", "p95", "unit", "n", "floor", "target", "met")
    lines = [header]
    for row in rows:
        met = {True: "yes", False: "NO", None: ""}[row.met]
        cells = (row.figure, row.metric, _number(row.p50), _number(row.p95), row.unit)
        lines.append((*cells, str(row.runs), row.floor, row.target, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
