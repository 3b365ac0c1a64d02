"""Percentiles as the benchmark reports them (nearest rank)."""

from __future__ import annotations

import math

from receipt_streams.bench.measure import latency_summary, percentile


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_summary_has_every_figure() -> None:
    summary = latency_summary([5.0, 1.0, 3.0])
    assert summary == {"count": 3, "p50_ms": 3.0, "p90_ms": 5.0, "p99_ms": 5.0, "max_ms": 5.0}
