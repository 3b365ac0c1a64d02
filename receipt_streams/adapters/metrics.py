"""Prometheus metrics of the pipeline (exposed on the worker's web port at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECEIPTS = Counter(
    "receipt_streams_receipts_total",
    "Receipts folded, by source and outcome (applied, unchanged, replayed).",
    ["source", "outcome"],
)
REJECTED = Counter(
    "receipt_streams_rejected_total",
    "Input records or entries sent to the DLQ, by reason.",
    ["reason"],
)
HELD = Counter(
    "receipt_streams_held_total",
    "Receipts held back until their event or join arrives.",
    ["waiting_for"],
)
INPUTS = Counter("receipt_streams_input_records_total", "Input records consumed.", ["topic"])
DELTAS = Counter("receipt_streams_deltas_total", "Sync deltas emitted.")
DELTA_BATCH = Histogram(
    "receipt_streams_delta_batch_changes",
    "Changelog records per delta batch.",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
)
EDUS = Counter("receipt_streams_edus_total", "Federation m.receipt EDUs emitted.")
