"""An API process's memory stays within its configured bound under a flood of distinct keys
(issue 12): with the read store on disk (the default) Python keeps nothing per key, and
RocksDB's memory is `READ_STORE_MEMORY_BYTES` (a memtable may pass it briefly before its
flush). The bound is the process's own idle RSS, plus that, plus `ALLOWANCE` for what the
configuration does not count: fetched batches (up to 10,000 records) and a batch's pending
writes, fetch buffers, and what glibc keeps of RocksDB's freed flush and compaction buffers
(about half of the growth outside the block cache is returned by `malloc_trim`).

Measured here (2 partitions, 16 MiB for RocksDB, 200,000 keys): about 78 MB of growth over an
idle 63 MB, RocksDB's accounted memory under 14 MB of it. With the view in memory
(`RECEIPT_STREAMS_READ_STORE=memory`) the same flood grew the process by 303 MB.

The changelogs are written directly, as a table worker would have (the readside bench's
layout, `bench/readside.py`), while the real `receipt-streams api` process tails them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from receipt_streams.bench.memory import memory_of
from receipt_streams.bench.readside import Layout, _ends, _send
from receipt_streams.bench.scenarios import LOCAL
from receipt_streams.core.sync_view import Token
from tests.support.worker import WorkerProcess, worker_settings

KEYS = 200_000
READ_STORE_BYTES = 16 * 2**20
ALLOWANCE = 88 * 2**20
BOUND = READ_STORE_BYTES * 5 // 4 + ALLOWANCE


async def _view_token(session: aiohttp.ClientSession, base: str, token: str) -> Token:
    async with session.get(
        f"{base}/_matrix/client/v3/sync",
        params={"timeout": "0"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return Token.decode(body["next_batch"])


async def test_api_rss_after_a_flood_of_distinct_keys_stays_under_the_configured_bound(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = worker_settings(
        kafka_bootstrap,
        tmp_path,
        server_name=LOCAL,
        serve_api=True,
        read_store_memory_bytes=READ_STORE_BYTES,
    )
    assert s.read_store == "rocksdb", "the default"
    layout = Layout(s, KEYS, seed=12)
    user = min(layout.plan_users)
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok": f"@u{user}:{LOCAL}"}))
    s = s.model_copy(update={"tokens_file": tokens})
    api = WorkerProcess(s, tmp_path / "api.log", "api")
    base = f"http://127.0.0.1:{s.web_port}"
    peak_during = 0
    try:
        api.start().wait_ready()  # it creates the topics: the changelogs are empty
        await asyncio.sleep(1.0)
        assert api.proc is not None
        pid = api.proc.pid
        idle = memory_of(pid)["VmRSS"]

        sending = asyncio.create_task(_send(kafka_bootstrap, layout.records(), 0, "flood"))
        async with aiohttp.ClientSession() as session:
            while not sending.done():
                peak_during = max(peak_during, memory_of(pid)["VmRSS"])
                await asyncio.sleep(0.5)
            await sending
            ends = Token(
                await _ends(kafka_bootstrap, s.changelog_receipts, s.partitions),
                await _ends(kafka_bootstrap, s.changelog_state, s.partitions),
            )
            deadline = time.monotonic() + 60
            while not (await _view_token(session, base, "tok")).reached(ends):
                assert time.monotonic() < deadline, f"not read in 60 s:\n{api.tail()}"
                assert memory_of(pid)["VmRSS"] - idle < BOUND, "over the bound while reading"
                await asyncio.sleep(0.5)
        assert layout.written_keys == KEYS and sum(ends.receipts) == KEYS
        peak = memory_of(pid)["VmHWM"]
    finally:
        assert api.stop() == 0, api.tail()
    growth = peak - idle
    print(
        f"API idle {idle / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB "
        f"(+{growth / 2**20:.1f} MB, bound {BOUND / 2**20:.1f} MB) after {KEYS} keys"
    )
    assert growth < BOUND, (
        f"peak RSS {peak / 2**20:.0f} MB: {growth / 2**20:.0f} MB over the idle API's "
        f"{idle / 2**20:.0f} MB, bound {BOUND / 2**20:.0f} MB"
    )
