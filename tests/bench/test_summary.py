"""Runs summarized as median and range; fields that differ between runs and are not numbers
are left out rather than shown as if they held for all."""

from __future__ import annotations

from receipt_streams.bench.summary import shown, summarize


def test_numbers_become_median_and_range() -> None:
    runs = [
        {"ratio": 0.5, "p99_ms": 80.0, "guarantee": "exactly_once", "missing": 0},
        {"ratio": 0.7, "p99_ms": 95.0, "guarantee": "exactly_once", "missing": 0},
        {"ratio": 0.6, "p99_ms": 120.0, "guarantee": "exactly_once", "missing": 1},
    ]
    s = summarize(runs)
    assert s["runs"] == 3
    assert s["ratio"] == {"median": 0.6, "min": 0.5, "max": 0.7, "values": [0.5, 0.7, 0.6]}
    assert s["p99_ms"]["median"] == 95.0
    assert s["missing"]["max"] == 1
    assert s["guarantee"] == "exactly_once"
    assert dict(shown(s))["p99_ms"] == "95 (80-120)"
    assert dict(shown(s))["ratio"] == "0.600 (0.500-0.700)"


def test_disagreeing_labels_are_dropped() -> None:
    s = summarize([{"client": "wrk", "note": "a"}, {"client": "wrk", "note": "b"}])
    assert s == {"runs": 2, "client": "wrk"}
    assert summarize([]) == {"runs": 0}
