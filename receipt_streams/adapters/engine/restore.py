"""Restore (Kafka Streams' ProcessorStateManager; quix-streams' state/recovery): bring each
store of newly assigned tasks from its recorded changelog position to the changelog's end.

Run after the tasks' sinks have started, so every earlier owner of the partition is fenced:
the end read here (the last stable offset, read committed) is final, and every later write
of the partition is this worker's own. So a store's recorded position means "every committed
write up to here is in me", whoever wrote it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from receipt_streams.adapters.engine.task import TABLES, PartitionTask
from receipt_streams.adapters.transactions import read_committed
from receipt_streams.config import Settings

log = logging.getLogger(__name__)


async def restore(s: Settings, tasks: Sequence[PartitionTask]) -> int:
    """Restore every store of `tasks`; returns the changelog records read."""
    t0 = time.monotonic()
    stores = {
        TopicPartition(task.changelogs[table], task.number): (task, table)
        for task in tasks
        for table in TABLES
    }
    consumer = read_committed(
        s,
        max_poll_records=20_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    restored = 0
    try:
        consumer.assign(list(stores))
        ends = await consumer.end_offsets(list(stores))
        remaining = set()
        for tp, (task, table) in stores.items():
            store = task.stores[table]
            start = 0 if store.offset is None else store.offset + 1
            if start > ends[tp]:
                log.warning(
                    "local store is ahead of its changelog (the topic was recreated or "
                    "truncated): rebuilding it from the changelog; no action needed",
                    extra={"tp": str(tp)},
                )
                task.recreate(table)
                start = 0
            if start < ends[tp]:
                consumer.seek(tp, start)
                remaining.add(tp)
        while remaining:
            got = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in got.items():
                task, table = stores[tp]
                writes = {r.key: r.value for r in records if r.offset < ends[tp]}
                task.stores[table].apply(writes, None)
                restored += len(writes)
            for tp in list(remaining):  # the end may be a marker or a compacted-away record
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        for tp, (task, table) in stores.items():
            if ends[tp] > 0:
                # Everything committed below the end is in the store now.
                task.stores[table].apply({}, ends[tp] - 1)
    finally:
        await consumer.stop()
    log.info(
        "stores restored",
        extra={
            "partitions": sorted({task.number for task in tasks}),
            "records": restored,
            "seconds": round(time.monotonic() - t0, 3),
        },
    )
    return restored
