"""The memory scenario: the RSS of a table worker, and of an API process, after N distinct keys.

The workload is made of distinct keys only (rooms of `users_per_room` local members drawn
from a pool of keys / 10 users, one event each, and one m.read receipt per member): what
makes memory grow with the data, not with the rate. The table worker (no client API, relays
apart or inline) is started first, its idle RSS taken, then the input topics are filled
while it folds; its RSS is sampled every second until its group has committed everything.
Then a `receipt-streams api` process (which keeps every receipt and membership in memory, for
/sync) reads both changelogs whole; its RSS is taken once it is ready.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from receipt_streams.adapters.engine.task import TABLES
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.bench.measure import end_offsets, groups_caught_up
from receipt_streams.bench.process import WorkerProcess, free_port
from receipt_streams.bench.scenarios import LOCAL, Bench
from receipt_streams.config import Settings

MB = 2**20


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the most it has been), in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def _pid(process: WorkerProcess) -> int:
    assert process.proc is not None and process.proc.poll() is None, process.tail()
    return process.proc.pid


def distinct_records(s: Settings, keys: int, users_per_room: int) -> Iterator[tuple[str, bytes]]:
    """(topic, value) of every join and event, then of every receipt: `keys` receipt keys."""
    rooms = math.ceil(keys / users_per_room)
    pool = max(users_per_room, keys // 10)

    def members(r: int) -> Iterator[str]:
        count = min(users_per_room, keys - r * users_per_room)
        return (f"@u{(r * users_per_room + j) % pool}:{LOCAL}" for j in range(count))

    pos = 0
    for r in range(rooms):
        room = f"!m{r}:{LOCAL}"
        for user in members(r):
            pos += 1
            join = {"room_id": room, "user_id": user, "membership": "join", "stream_pos": pos}
            yield s.topic_membership, orjson.dumps(join)
        pos += 1
        event = {
            "room_id": room,
            "event_id": f"$m{r}e0",
            "sender": f"@u{(r * users_per_room) % pool}:{LOCAL}",
            "stream_pos": pos,
            "origin_server_ts": 1_700_000_000_000 + pos,
        }
        yield s.topic_events, orjson.dumps(event)
    for r in range(rooms):
        room = f"!m{r}:{LOCAL}"
        for user in members(r):
            pos += 1
            receipt = {
                "room_id": room,
                "user_id": user,
                "receipt_type": "m.read",
                "event_id": f"$m{r}e0",
                "ts": 1_700_000_000_000 + pos,
            }
            yield s.topic_client, orjson.dumps(receipt)


async def _produce_stream(bootstrap: str, records: Iterator[tuple[str, bytes]], total: int) -> None:
    """Send records keyed by room as they are generated (never all in memory at once)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = []
        for topic, value in tqdm(records, total=total, desc="preload", unit="rec", leave=False):
            room = orjson.loads(value)["room_id"].encode()
            pending.append(await producer.send(topic, value, key=room))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def bench_memory(
    b: Bench, keys: int, relays_apart: bool = True, users_per_room: int = 50
) -> dict[str, Any]:
    s = b.settings(serve_api=False, run_relays=not relays_apart, grace_period_s=300.0)
    await ensure_topics(s)
    inputs = [s.topic_membership, s.topic_events, s.topic_client]
    groups = {s.app_id: inputs}
    if relays_apart:
        groups[f"{s.app_id}-sync-deltas"] = [s.changelog_receipts]
    relays = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port()}),
        b.workdir / "memory-relays.log",
        "relays",
    )
    worker = b.worker(s, "memory")
    api = WorkerProcess(
        s.model_copy(
            update={"web_port": free_port(), "admin_port": free_port(), "serve_api": True}
        ),
        b.workdir / "memory-api.log",
        command="api",
    )
    rooms = math.ceil(keys / users_per_room)
    total = 2 * keys + rooms
    samples: list[tuple[float, float]] = []  # (seconds since the preload began, RSS MB)
    try:
        api.start().wait_ready(120)  # on empty changelogs: the API's idle RSS
        api_idle = memory_of(_pid(api))["VmRSS"]
        api.stop()
        if relays_apart:
            relays.start().wait_ready(120)
        worker.start().wait_ready(120)
        await asyncio.sleep(2.0)
        worker_idle = memory_of(_pid(worker))["VmRSS"]

        t0 = time.monotonic()
        sampling = True

        async def sample() -> None:
            while sampling:
                rss = memory_of(_pid(worker))["VmRSS"]
                samples.append((round(time.monotonic() - t0, 1), round(rss / MB, 1)))
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample())
        await _produce_stream(b.bootstrap, distinct_records(s, keys, users_per_room), total)
        produced_s = time.monotonic() - t0
        deadline = time.monotonic() + 3600
        with tqdm(desc="fold", unit="s", leave=False) as bar:
            while not await groups_caught_up(b.bootstrap, groups):
                if time.monotonic() > deadline:
                    raise TimeoutError("memory: the fold did not finish in 3600 s")
                await asyncio.sleep(1.0)
                bar.update(1)
        folded_s = time.monotonic() - t0
        sampling = False
        await sampler
        worker_mem = memory_of(_pid(worker))
        relays_mem = memory_of(_pid(relays)) if relays_apart else None

        changelogs = await end_offsets(b.bootstrap, [s.changelog_receipts, s.changelog_state])
        api.start()
        api_ready_s = api.wait_ready(1800)  # ready: both changelogs read to their end
        await asyncio.sleep(2.0)
        api_mem = memory_of(_pid(api))
        dlq = sum((await end_offsets(b.bootstrap, [s.topic_dlq])).values())
    finally:
        api.stop()
        worker.stop()
        relays.stop()

    stores = len(TABLES) * s.partitions
    configured = stores * s.store_cache_bytes + s.rocksdb_memory_bytes
    receipt_records = sum(v for tp, v in changelogs.items() if tp.topic == s.changelog_receipts)
    state_records = sum(v for tp, v in changelogs.items() if tp.topic == s.changelog_state)
    # Every sample, down to about 60 of them: how RSS moved while the keys were folded.
    step = max(1, len(samples) // 60)
    return {
        "keys": keys,
        "rooms": rooms,
        "users": max(users_per_room, keys // 10),
        "input_records": total,
        "partitions": s.partitions,
        "relays": "apart" if relays_apart else "in the worker",
        "store_cache_bytes": s.store_cache_bytes,
        "rocksdb_memory_bytes": s.rocksdb_memory_bytes,
        "rocksdb_write_buffer_bytes": s.rocksdb_write_buffer_bytes,
        "configured_stores_mb": configured / MB,
        "worker_idle_rss_mb": worker_idle / MB,
        "worker_rss_mb": worker_mem["VmRSS"] / MB,
        "worker_hwm_mb": worker_mem["VmHWM"] / MB,
        "worker_growth_mb": (worker_mem["VmHWM"] - worker_idle) / MB,
        "worker_growth_bytes_per_key": (worker_mem["VmHWM"] - worker_idle) / keys,
        "relays_rss_mb": relays_mem["VmRSS"] / MB if relays_mem else None,
        "api_read_store": s.read_store,
        "api_read_store_memory_bytes": s.read_store_memory_bytes,
        "api_idle_rss_mb": api_idle / MB,
        "api_rss_mb": api_mem["VmRSS"] / MB,
        "api_hwm_mb": api_mem["VmHWM"] / MB,
        "api_growth_bytes_per_key": (api_mem["VmRSS"] - api_idle) / keys,
        "api_ready_s": api_ready_s,
        "changelog_receipts_records": receipt_records,
        "changelog_state_records": state_records,
        "dlq_records": dlq,
        "preload_s": produced_s,
        "fold_s": folded_s,
        "worker_rss_samples": samples[::step],
    }
