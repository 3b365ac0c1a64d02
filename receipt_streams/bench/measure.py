"""Small measuring tools: percentiles, result tables and JSON, Kafka progress probes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
    }


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 20))
    for name, value in rows:
        print(f"{name:<{width}}  {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_result(out_dir: Path, name: str, result: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def groups_caught_up(bootstrap: str, groups: Mapping[str, Sequence[str]]) -> bool:
    """Has every group committed every partition of its topics up to its end? One probe for
    all (it runs every second beside the worker it measures: it should cost little)."""
    ends = await end_offsets(bootstrap, sorted({t for topics in groups.values() for t in topics}))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for group, topics in groups.items():
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except KafkaError as exc:
                if exc.retriable:  # e.g. a new broker still creating its offsets topic
                    return False
                raise
            for tp, end in ends.items():
                behind = tp not in committed or committed[tp].offset < end
                if tp.topic in topics and end > 0 and behind:
                    return False
    finally:
        await admin.close()
    return True


async def group_caught_up(bootstrap: str, group: str, topics: Sequence[str]) -> bool:
    return await groups_caught_up(bootstrap, {group: topics})


async def record_times(bootstrap: str, topics: Sequence[str], first: bool) -> float | None:
    """The earliest (first=True) or latest timestamp, in seconds, of the topics' records."""
    ends = await end_offsets(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        stamps = []
        for tp, end in ends.items():
            if end == 0:
                continue
            consumer.assign([tp])
            if first:
                await consumer.seek_to_beginning(tp)
            else:
                # The last offsets may be transaction markers, which hold no record.
                consumer.seek(tp, max(0, end - 64))
            got = await consumer.getmany(tp, timeout_ms=5000, max_records=1 if first else 64)
            records = got.get(tp, [])
            if records:
                stamps.append((records[0] if first else records[-1]).timestamp / 1000)
        if not stamps:
            return None
        return min(stamps) if first else max(stamps)
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of `topic` (committed ones), up to its end offsets when called."""
    ends = {tp: end for tp, end in (await end_offsets(bootstrap, [topic])).items() if end}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while ends and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            for tp in list(ends):
                if await consumer.position(tp) >= ends[tp]:
                    del ends[tp]
        return records
    finally:
        await consumer.stop()
