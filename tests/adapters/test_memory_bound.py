"""A table worker's memory stays within its configured bounds under a flood of distinct keys.

The bound is the worker's own idle RSS, plus what the configuration lets the stores keep
(read caches and RocksDB's memory), plus `ALLOWANCE` for what does not grow with the keys:
two batches in flight, fetch and send buffers, the ID and partition caches (bounded by
count), pymalloc's and glibc's slack. Before the stores kept compact copies in caches
bounded by bytes, 50,000 keys cost this worker about 11 KB each: over 500 MB.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from receipt_streams.bench.measure import groups_caught_up
from receipt_streams.bench.memory import _produce_stream, distinct_records, memory_of
from tests.support.worker import WorkerProcess, worker_settings

KEYS = 50_000
PARTITIONS = 2
CACHE_BYTES = 256 * 2**10  # per store, three stores per partition
ROCKSDB_BYTES = 16 * 2**20  # per process
ALLOWANCE = 48 * 2**20
BOUND = 3 * PARTITIONS * CACHE_BYTES + ROCKSDB_BYTES + ALLOWANCE


async def test_rss_after_a_flood_of_distinct_keys_stays_under_the_configured_bound(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = worker_settings(
        kafka_bootstrap,
        tmp_path,
        partitions=PARTITIONS,
        serve_api=False,
        run_relays=False,
        grace_period_s=300.0,
        store_cache_bytes=CACHE_BYTES,
        rocksdb_memory_bytes=ROCKSDB_BYTES,
        rocksdb_write_buffer_bytes=2**20,
    )
    worker = WorkerProcess(s, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        await asyncio.sleep(1.0)
        assert worker.proc is not None
        pid = worker.proc.pid
        idle = memory_of(pid)["VmRSS"]

        await _produce_stream(kafka_bootstrap, distinct_records(s, KEYS, 50), 2 * KEYS)
        inputs = {s.app_id: [s.topic_membership, s.topic_events, s.topic_client]}
        deadline = time.monotonic() + 60
        while not await groups_caught_up(kafka_bootstrap, inputs):
            assert time.monotonic() < deadline, f"not folded in 60 s:\n{worker.tail()}"
            assert memory_of(pid)["VmRSS"] - idle < BOUND, "over the bound while folding"
            await asyncio.sleep(0.5)
        peak = memory_of(pid)["VmHWM"]
    finally:
        worker.stop()
    growth = peak - idle
    assert growth < BOUND, (
        f"peak RSS {peak / 2**20:.0f} MB: {growth / 2**20:.0f} MB over the idle worker's "
        f"{idle / 2**20:.0f} MB, bound {BOUND / 2**20:.0f} MB"
    )
