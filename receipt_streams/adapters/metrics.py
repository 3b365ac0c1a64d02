"""Prometheus metrics of the pipeline (exposed on the admin listener at /metrics)."""

from __future__ import annotations

import functools
import gc
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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
DLQ_OVER_BUDGET = Counter(
    "receipt_streams_dlq_over_budget_total",
    "Rejected inbound EDU entries counted but not written to the DLQ: their EDU's DLQ records "
    "would have passed twice its bytes (also counted in receipt_streams_rejected_total).",
    ["reason"],
)
HELD = Counter(
    "receipt_streams_held_total",
    "Receipts held back until their event or join arrives.",
    ["waiting_for"],
)
REMOVED = Counter(
    "receipt_streams_removed_receipts_total",
    "Table slots removed (tombstoned) by admin commands, by command.",
    ["command"],
)
INPUTS = Counter("receipt_streams_input_records_total", "Input records consumed.", ["topic"])
DELTAS = Counter("receipt_streams_deltas_total", "Sync deltas emitted.")
DELTA_BATCH = Histogram(
    "receipt_streams_delta_batch_changes",
    "Changelog records per delta batch.",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
)
CHECKPOINT_SECONDS = Histogram(
    "receipt_streams_checkpoint_seconds",
    "Time to make one batch durable (outputs, changelogs and offsets published, by "
    "transaction or acks); a receipt waits for the rest of the one in flight when it "
    "arrives, then its own.",
    ["loop"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_RECORDS = Histogram(
    "receipt_streams_batch_records",
    "Input records per folded batch.",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
)
GC_PAUSE = Histogram(
    "receipt_streams_gc_pause_seconds",
    "Python garbage-collector pauses, by generation: the whole process (its HTTP answers, its "
    "batches) waits while one runs.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
EDUS = Counter("receipt_streams_edus_total", "Federation m.receipt EDUs emitted.")
FEED_RECORDS = Counter(
    "receipt_streams_feed_records_total",
    "Records the fold wrote to its feeds, by feed (read_positions, history).",
    ["feed"],
)
READ_STORE_ANSWERS = Counter(
    "receipt_streams_read_store_answers_total",
    "Per-room answers of the API's on-disk view, by whether they were kept from an earlier "
    "request (kept) or read from RocksDB (read).",
    ["outcome"],
)
READ_STORE_ANSWERS_HELD = Gauge(
    "receipt_streams_read_store_answers_receipts",
    "Receipts held in kept answers of the API's on-disk view "
    "(bounded by RECEIPT_STREAMS_READ_STORE_ANSWERS_RECEIPTS).",
)
READ_STORE_BACKGROUND = Gauge(
    "receipt_streams_read_store_background_jobs",
    "RocksDB flushes and compactions of the API's on-disk view, running or pending: a view "
    "just rebuilt or restarted compacts for a while, using a core's worth of its process.",
)
LAG = Gauge(
    "receipt_streams_consumer_lag",
    "Records on a partition not yet consumed (highwater - position).",
    ["consumer", "topic", "partition"],
)

_lag_at: dict[str, float] = {}


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: `labels` costs a few microseconds a call,
    which a per-record hot path feels. Label values here come from small fixed sets."""
    return metric.labels(*labels)


async def record_lag(name: str, consumer: Any, every_s: float = 5.0) -> None:
    """Refresh the lag gauges of one consumer (aiokafka or faust), at most every `every_s`."""
    now = time.monotonic()
    if now - _lag_at.get(name, 0.0) < every_s:
        return
    _lag_at[name] = now
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        position = await consumer.position(tp)
        if highwater is not None and position is not None:
            LAG.labels(name, tp.topic, str(tp.partition)).set(max(0, highwater - position))


LOOP_RESTARTS = Counter(
    "receipt_streams_loop_restarts_total",
    "Restarts of a background loop after a failure (fold, sync-deltas, federation-edus, "
    "sync feed).",
    ["loop"],
)
LOOP_LAST_SUCCESS = Gauge(
    "receipt_streams_loop_last_success_timestamp_seconds",
    "When a background loop last made progress (a batch made durable, a relay cycle).",
    ["loop"],
)
LOOP_STUCK = Gauge(
    "receipt_streams_loop_stuck",
    "1 while a loop has failed several times in a row without progress (/readyz is 503).",
    ["loop"],
)
FENCED = Counter(
    "receipt_streams_fenced_total",
    "Batches refused because another worker took the partition over (a transactional "
    "producer was fenced); the loop restarts and rejoins the group.",
    ["loop"],
)
PARTITION_REPAIRS = Counter(
    "receipt_streams_partition_repairs_total",
    "Input partitions the faust engine read again: a record came after one Faust dropped "
    "(out_of_order), a commit waited for a record never folded (commit_stalled), Faust "
    "dropped fetched records as a rebalance began (dropped_fetch), a partition with records "
    "to fold made no progress (no_progress), or no seek followed an assignment (no_seek).",
    ["reason"],
)
PARKED = Counter(
    "receipt_streams_parked_total",
    "Records parked in the DLQ by an engine so the stream goes on: an input record a batch "
    "could not get past (split until found), or an output over the producer's limit or "
    "refused by the broker; by reason (unproducible, poison_batch) and the topic it came from.",
    ["reason", "topic"],
)
ISOLATIONS = Counter(
    "receipt_streams_isolations_total",
    "Batches that failed on their contents and were split to find the records at fault.",
    ["loop"],
)


_gc_started: list[float] = []


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        GC_PAUSE.labels(str(info.get("generation", "?"))).observe(
            time.perf_counter() - _gc_started[0]
        )


def time_gc_pauses() -> None:
    """Observe every collection's pause in `GC_PAUSE` (once per process)."""
    if _gc_timer not in gc.callbacks:
        gc.callbacks.append(_gc_timer)
