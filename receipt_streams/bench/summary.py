"""Several runs of one scenario as one figure: the median and the range of each number.

A single run on a shared two-core machine says little (runs drift by a third); the README
reports every figure as the median of at least three runs with their range.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric field present in every run: median, min, max and the values in run order.
    Other fields are kept when every run agrees on them."""
    if not runs:
        return {"runs": 0}
    out: dict[str, Any] = {"runs": len(runs)}
    for key in runs[0]:
        values = [run.get(key) for run in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            numbers = [float(v) for v in values]  # type: ignore[arg-type]
            out[key] = {
                "median": statistics.median(numbers),
                "min": min(numbers),
                "max": max(numbers),
                "values": numbers,
            }
        elif all(v == values[0] for v in values):
            out[key] = values[0]
    return out


def shown(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """Table rows: `median (min-max)` for numbers."""
    rows: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, dict) and "median" in value:
            rows.append(
                (key, f"{_fmt(value['median'])} ({_fmt(value['min'])}-{_fmt(value['max'])})")
            )
        elif not isinstance(value, dict):
            rows.append((key, value))
    return rows


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "nan"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3f}"
