"""The read-side scenario (issue 14): an API process with its view on disk
(`RECEIPT_STREAMS_READ_STORE=rocksdb`) over N receipt keys: its RSS, its time to ready with no
local state and after a restart with it, and `/sync` and sliding-sync latency under load.

The changelogs are written directly, as a table worker would have written them, so that N can
be 10,000,000 without folding it first: the receipts changelog holds N distinct keys, the
room-state changelog every join and the rooms' newest events (the API needs both). Rooms come
in blocks of 1,000 whose sizes fall as 2,000 / rank (one of 2,000 members, one of 1,000, ...,
most of 2 to 10): about 15,000 members a block, so a user (a pool of N / 10) is in about ten
rooms, some big. Each member holds an `m.read` receipt on one of the room's newest events (50
kept for rooms of 100 members or more, 3 for smaller ones); every tenth also an
`m.read.private`, every twentieth a threaded `m.read`. Then a tail of updates (new events, and
a member's `m.read` moved onto each): what incremental `/sync` has to find.

Nothing else runs: the bench process (waiting on wrk) and wrk (one thread) beside the API
process and the broker; the preload is over before the API starts.

Load, each from wrk at `rate` for `duration`, after 2 s of the same load not measured:
- `/sync` is incremental (`since` a token from before the tail, `timeout=0`): what a client
  sends over and over, answered with the tail's changes in the user's rooms. An initial
  `/sync` (once per login) is not part of it.
- sliding sync is the client form with no `pos` (a connection opened afresh each time, the
  heaviest case): `room_subscriptions` of up to five of the user's rooms, the first with a
  timeline of 20 events (the open room), the others with 1 (the room list), and
  `extensions.receipts` enabled: the receipts on those timelines and the user's own.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from receipt_streams.adapters.effects import Output
from receipt_streams.adapters.sending import partition_of, send_all
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.bench.measure import end_offsets
from receipt_streams.bench.memory import MB, memory_of
from receipt_streams.bench.process import (
    WorkerProcess,
    disk_read_bytes,
    free_port,
    machine_busy_seconds,
    machine_steal_seconds,
)
from receipt_streams.bench.scenarios import LOCAL, Bench
from receipt_streams.bench.wrk import Request, WrkResult, requests_at_rate, wrk_path
from receipt_streams.config import Settings
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from receipt_streams.core.sync_view import Token

BLOCK = 1000  # rooms per block of sizes
BIGGEST = 2000  # members of a block's biggest room
BIG = 100  # a room this big keeps 50 recent events, a smaller one 3
PLAN_USERS = 1000  # users the load is spread over (their tokens in the tokens file)
SUBSCRIPTIONS = 5  # sliding sync: rooms per request
CLIENT = "/_matrix/client/v3"
SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
TS0 = 1_700_000_000_000


def room_size(r: int, pool: int) -> int:
    return min(pool, max(2, BIGGEST // (r % BLOCK + 1)))


def events_of(size: int) -> int:
    return 50 if size >= BIG else 3


class Layout:
    """Which rooms, members, events and receipts make `keys` distinct receipt keys; made as it
    is sent (never all in memory), the same for the same seed."""

    def __init__(self, s: Settings, keys: int, seed: int) -> None:
        self.s = s
        self.keys = keys
        self.pool = max(BIGGEST, keys // 10)
        self.rng = random.Random(seed)
        self.plan_users = set(self.rng.sample(range(self.pool), min(PLAN_USERS, self.pool)))
        self.rooms_of: dict[int, list[int]] = {u: [] for u in self.plan_users}
        self.rooms = 0  # rooms made so far
        self.memberships = 0
        self.events = 0
        self.written_keys = 0
        self.pos = 0  # stream positions of joins and events

    @staticmethod
    def room_id(r: int) -> str:
        return f"!r{r}:{LOCAL}"

    def member(self, r: int, j: int) -> int:
        # Distinct within a room (j < size <= pool); rooms scattered over the pool.
        return (r * 2654435761 + j) % self.pool

    def _state(self, room: str, part: int, key: list[str], value: dict[str, Any]) -> Output:
        return (self.s.changelog_state, orjson.dumps(key), orjson.dumps(value), part)

    def _receipt(
        self, room: str, part: int, user: str, rtype: str, thread: str | None, event: str, sp: int
    ) -> Output:
        ts = TS0 + sp
        key = ReceiptKey(room, user, rtype, thread).encode()
        value = Receipt(event, sp, ts, client_data(ts, thread)).encode()
        return (self.s.changelog_receipts, key, value, part)

    def records(self) -> Iterator[Output]:
        """Every join, event and receipt, room by room, until `keys` receipt keys."""
        r = 0
        while self.written_keys < self.keys:
            room = self.room_id(r)
            part = partition_of(room.encode(), self.s.partitions)
            size = room_size(r, self.pool)
            users = [self.member(r, j) for j in range(size)]
            for u in users:
                self.pos += 1
                join = {"membership": "join", "stream_pos": self.pos}
                yield self._state(room, part, ["m", room, f"@u{u}:{LOCAL}"], join)
                if u in self.rooms_of and len(self.rooms_of[u]) < 50:
                    self.rooms_of[u].append(r)
            events = []
            for e in range(events_of(size)):
                self.pos += 1
                event_id = f"$r{r}e{e}"
                sender = f"@u{users[e % size]}:{LOCAL}"
                info = {"stream_pos": self.pos, "sender": sender, "ts": TS0 + self.pos}
                yield self._state(room, part, ["e", room, event_id], info)
                events.append((event_id, self.pos))
            self.memberships += size
            self.events += len(events)
            newest = events[-1]
            for j, u in enumerate(users):
                user = f"@u{u}:{LOCAL}"
                kinds = [("m.read", None, events[-1 - j % len(events)])]
                if j % 10 == 3:
                    kinds.append(("m.read.private", None, newest))
                if j % 20 == 7:
                    kinds.append(("m.read", events[0][0], newest))
                for rtype, thread, (event_id, sp) in kinds:
                    if self.written_keys >= self.keys:
                        break
                    self.written_keys += 1
                    yield self._receipt(room, part, user, rtype, thread, event_id, sp)
            r += 1
            self.rooms = r

    def updates(self, count: int) -> Iterator[Output]:
        """`count` new events, each in a room drawn by size (busy rooms are the big ones),
        with one member's `m.read` moved onto it: no new key."""
        full = max(1, self.rooms - 1)  # the last room may hold fewer receipts than members
        ranks = list(range(min(BLOCK, full)))
        weights = [room_size(k, self.pool) for k in ranks]
        for n in range(count):
            k = self.rng.choices(ranks, weights)[0]
            blocks = (full - 1 - k) // BLOCK + 1
            r = k + BLOCK * self.rng.randrange(blocks)
            room = self.room_id(r)
            part = partition_of(room.encode(), self.s.partitions)
            self.pos += 1
            event_id = f"$r{r}u{n}"
            user = f"@u{self.member(r, self.rng.randrange(room_size(r, self.pool)))}:{LOCAL}"
            info = {"stream_pos": self.pos, "sender": user, "ts": TS0 + self.pos}
            yield self._state(room, part, ["e", room, event_id], info)
            self.events += 1
            yield self._receipt(room, part, user, "m.read", None, event_id, self.pos)


async def _send(bootstrap: str, records: Iterator[Output], total: int, label: str) -> int:
    """Send in chunks of 50,000 (a batch per partition, not a future per record)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        chunk: list[Output] = []
        with tqdm(total=total, desc=label, unit="rec", leave=False) as bar:
            for record in records:
                chunk.append(record)
                if len(chunk) >= 50_000:
                    await send_all(producer, chunk)
                    sent += len(chunk)
                    bar.update(len(chunk))
                    chunk = []
            await send_all(producer, chunk)
            sent += len(chunk)
            bar.update(len(chunk))
    finally:
        await producer.stop()
    return sent


async def _ends(bootstrap: str, topic: str, partitions: int) -> tuple[int, ...]:
    ends = await end_offsets(bootstrap, [topic])
    by_part = {tp.partition: v for tp, v in ends.items() if tp.topic == topic}
    return tuple(by_part.get(p, 0) for p in range(partitions))


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _start(api: WorkerProcess) -> dict[str, float]:
    """Start the API process; seconds to /readyz 200 and its memory once ready."""
    api.start()
    ready_s = api.wait_ready(7200)
    assert api.proc is not None
    time.sleep(1.0)  # settled: the last batch written, the first answers served
    mem = memory_of(api.proc.pid)
    return {"ready_s": ready_s, "rss_mb": mem["VmRSS"] / MB, "hwm_mb": mem["VmHWM"] / MB}


def _settle(api: WorkerProcess, timeout_s: float = 1800) -> float:
    """Seconds until the process's view has no flush or compaction running or pending. A
    view just built, or reopened, compacts for a while (about 10 s of a core at 10,000,000
    keys): the loads are measured on a settled view, and copies are made of one."""
    t0 = time.monotonic()
    quiet = 0  # polls in a row with nothing running or pending: 2 s of them
    while quiet < 4:
        assert time.monotonic() - t0 < timeout_s, f"still compacting after {timeout_s} s"
        jobs = api.metric("receipt_streams_read_store_background_jobs")
        assert jobs is not None, f"no read store metrics on its admin port:\n{api.tail()}"
        quiet = 0 if jobs else quiet + 1
        time.sleep(0.5)
    return time.monotonic() - t0


def _plans(layout: Layout, since: str, lines: int, seed: int) -> tuple[list[Request], ...]:
    rng = random.Random(seed)
    users = sorted(u for u, rooms in layout.rooms_of.items() if rooms)
    sync, sliding = [], []
    q = quote(since, safe="")
    for n in range(lines):
        u = users[n % len(users)] if n < len(users) else rng.choice(users)
        token = f"tok-u{u}"
        sync.append(Request("GET", f"{CLIENT}/sync?since={q}&timeout=0", token))
        rooms = layout.rooms_of[u]
        opened = rng.choice(rooms)
        others = [r for r in rooms if r != opened]
        listed = rng.sample(others, min(SUBSCRIPTIONS - 1, len(others)))
        subs = {layout.room_id(opened): {"timeline_limit": 20}}
        subs |= {layout.room_id(r): {"timeline_limit": 1} for r in listed}
        body = {
            "conn_id": "main",
            "room_subscriptions": subs,
            "extensions": {"receipts": {"enabled": True}},
        }
        sliding.append(Request("POST", f"{SLIDING}?timeout=0", token, orjson.dumps(body)))
    return sync, sliding


def _receipts_in(content: dict[str, Any]) -> int:
    return sum(len(users) for by_type in content.values() for users in by_type.values())


def _count(answer: dict[str, Any]) -> int:
    """Receipts in a /sync or sliding-sync answer."""
    if "extensions" in answer:
        rooms = answer["extensions"].get("receipts", {}).get("rooms", {})
        return sum(_receipts_in(edu["content"]) for edu in rooms.values())
    return sum(
        _receipts_in(edu["content"])
        for room in answer["rooms"]["join"].values()
        for edu in room.get("ephemeral", {}).get("events", [])
    )


async def _sample(api: WorkerProcess, plan: list[Request], n: int = 200) -> dict[str, float]:
    """What the first `n` requests of a plan answer (asked one by one, before the load): so
    the figures say how much each answer carries."""
    host = f"http://127.0.0.1:{api.settings.web_port}"
    sizes, counts = [], []
    async with aiohttp.ClientSession() as session:
        for r in plan[:n]:
            headers = {"Authorization": f"Bearer {r.token}"}
            request = session.request(r.method, host + r.path, data=r.body, headers=headers)
            async with request as resp:
                raw = await resp.read()
                assert resp.status == 200, (resp.status, raw[:500])
            sizes.append(len(raw))
            counts.append(_count(orjson.loads(raw)))
    return {
        "answer_bytes_mean": statistics.fmean(sizes),
        "answer_bytes_max": max(sizes),
        "answer_receipts_mean": statistics.fmean(counts),
        "answer_receipts_max": max(counts),
        "answers_with_receipts": sum(c > 0 for c in counts) / len(counts),
    }


def _served(api: WorkerProcess) -> float:
    """HTTP requests this API process has answered (its latency histogram's count)."""
    return api.metric_sums("receipt_streams_http_request_seconds").get("count", 0.0)


def _pids(apis: list[WorkerProcess]) -> list[int]:
    pids = [api.proc.pid for api in apis if api.proc is not None]
    assert len(pids) == len(apis), "an API process is not running"
    return pids


async def _load(
    apis: list[WorkerProcess], plan: list[Request], rate: float, duration: float, workdir: Path
) -> tuple[WrkResult, float, dict[str, float]]:
    """wrk's result, the seconds it ran, the CPU the API processes (together) and the whole
    machine used meanwhile (seconds per second: 2.0 is both cores; of the machine's, what the
    hypervisor stole from this virtual machine's cores), and what the API processes read from
    storage: their views' blocks that neither RocksDB's cache nor the page cache held."""
    host = f"http://127.0.0.1:{apis[0].settings.web_port}"  # shared by them all
    warm = min(2.0, duration)  # caches warmed by the same load, not measured
    await requests_at_rate(host, plan, rate, warm, workdir / "warm", 32, cycle=True)
    t0 = time.monotonic()
    pids = _pids(apis)
    api_cpu, (busy, total) = sum(a.cpu_seconds() for a in apis), machine_busy_seconds()
    steal = machine_steal_seconds()
    read = sum(map(disk_read_bytes, pids))
    served = list(map(_served, apis))
    result = await requests_at_rate(host, plan, rate, duration, workdir, 32, cycle=True)
    each = [after - before for after, before in zip(map(_served, apis), served, strict=True)]
    busy2, total2 = machine_busy_seconds()
    wall = (total2 - total) / (os.cpu_count() or 1)
    figures = {
        "cpu_api": (sum(a.cpu_seconds() for a in apis) - api_cpu) / wall,
        "cpu_machine": (busy2 - busy) / wall,
        "cpu_steal": (machine_steal_seconds() - steal) / wall,
        "disk_read_mb": (sum(map(disk_read_bytes, pids)) - read) / MB,
        # The share of the requests the busiest API process answered (1.0 with one process;
        # 1 / processes when the kernel spread the connections evenly).
        "busiest_api_share": max(each) / max(1.0, sum(each)),
    }
    return result, time.monotonic() - t0, figures


def _load_fields(
    name: str, load: tuple[WrkResult, float, dict[str, float]], sample: dict[str, float]
) -> dict[str, Any]:
    result, seconds, figures = load
    return {
        **{f"{name}_{k}": v for k, v in sample.items()},
        f"{name}_requests": result.requests,
        f"{name}_achieved_per_s": result.requests / seconds,
        f"{name}_p50_ms": result.p50_ms,
        f"{name}_p99_ms": result.p99_ms,
        f"{name}_non_2xx": result.non_2xx,
        f"{name}_socket_errors": result.socket_errors,
        **{f"{name}_{k}": v for k, v in figures.items()},
    }


def _copies(s: Settings, processes: int) -> list[Settings]:
    """The API processes' settings: with more than one, they share the client port
    (SO_REUSEPORT), each with its own data dir and admin port, as an operator runs several
    on one host."""
    if processes == 1:
        return [s]
    s = s.model_copy(update={"web_reuse_port": True})
    return [s] + [
        s.model_copy(
            update={
                "data_dir": s.data_dir.with_name(f"{s.data_dir.name}-{n}"),
                "admin_port": free_port(),
            }
        )
        for n in range(1, processes)
    ]


async def bench_readside(
    b: Bench, keys: int, rate: float = 500.0, duration: float = 30.0, api_processes: int = 1
) -> dict[str, Any]:
    wrk_path()  # before the preload: say at once when the load generator is missing
    s = b.settings(serve_api=True, read_store="rocksdb")
    layout = Layout(s, keys, b.seed)
    tokens = b.workdir / "readside-tokens.json"
    tokens.write_bytes(orjson.dumps({f"tok-u{u}": f"@u{u}:{LOCAL}" for u in layout.plan_users}))
    s = s.model_copy(update={"tokens_file": tokens})
    await ensure_topics(s)

    # About 2.2 records a key (joins, events, receipts), counted as they go.
    t0 = time.monotonic()
    await _send(b.bootstrap, layout.records(), int(keys * 2.2), "preload")
    receipts_before = await _ends(b.bootstrap, s.changelog_receipts, s.partitions)
    state_before = await _ends(b.bootstrap, s.changelog_state, s.partitions)
    tail = max(100, min(keys // 50, 200_000))
    await _send(b.bootstrap, layout.updates(tail), 2 * tail, "updates")
    preload_s = time.monotonic() - t0
    since = Token(receipts_before, state_before).encode()
    receipt_records = sum(await _ends(b.bootstrap, s.changelog_receipts, s.partitions))
    state_records = sum(await _ends(b.bootstrap, s.changelog_state, s.partitions))

    lines = max(PLAN_USERS, int(rate * duration))
    sync_plan, sliding_plan = _plans(layout, since, min(lines, 20_000), b.seed)
    settings = _copies(s, api_processes)
    apis = [
        WorkerProcess(c, b.workdir / f"readside-api{'-' + str(n) if n else ''}.log", command="api")
        for n, c in enumerate(settings)
    ]
    api = apis[0]
    view = s.data_dir / "read-view"
    for c in settings:
        shutil.rmtree(c.data_dir, ignore_errors=True)
    try:
        cold = _start(api)
        assert api.stop() == 0, api.tail()
        disk = _disk_bytes(view)
        warm = _start(api)
        settle_s = _settle(api)
        restarts = []
        if apis[1:]:  # the others start from a copy of the first one's settled view
            assert api.stop() == 0, api.tail()
            for c in settings[1:]:
                shutil.copytree(view, c.data_dir / "read-view")
            restarts = [_start(each) for each in apis]
            settle_s += max(map(_settle, apis))
        sync_sample = await _sample(api, sync_plan)
        sliding_sample = await _sample(api, sliding_plan)
        load_before = os.getloadavg()[0]
        sync = await _load(apis, sync_plan, rate, duration, b.workdir / "readside-sync")
        sliding = await _load(apis, sliding_plan, rate, duration, b.workdir / "readside-sliding")
        load_after = os.getloadavg()[0]
        loaded = [memory_of(pid) for pid in _pids(apis)]
    finally:
        for each in apis:
            each.stop()
    return {
        "keys": keys,
        "rooms": layout.rooms,
        "users": layout.pool,
        "memberships": layout.memberships,
        "events": layout.events,
        "tail_updates": tail,
        "changelog_receipts_records": receipt_records,
        "changelog_state_records": state_records,
        "partitions": s.partitions,
        "preload_s": preload_s,
        "read_store": "rocksdb",
        "read_store_memory_mb": s.read_store_memory_bytes / MB,
        "ready_no_local_state_s": cold["ready_s"],
        "rss_ready_no_local_state_mb": cold["rss_mb"],
        "hwm_ready_no_local_state_mb": cold["hwm_mb"],
        "read_view_disk_mb": disk / MB,
        "ready_local_state_s": max(w["ready_s"] for w in [warm, *restarts]),
        "rss_ready_local_state_mb": max(w["rss_mb"] for w in [warm, *restarts]),
        "hwm_ready_local_state_mb": max(w["hwm_mb"] for w in [warm, *restarts]),
        "api_processes": api_processes,
        "settle_s": settle_s,
        "rate_per_s": rate,
        "duration_s": duration,
        **_load_fields("sync", sync, sync_sample),
        **_load_fields("sliding", sliding, sliding_sample),
        "rss_after_load_mb": max(m["VmRSS"] for m in loaded) / MB,
        "hwm_after_load_mb": max(m["VmHWM"] for m in loaded) / MB,
        "sync_form": "incremental, since a token from before the tail, timeout=0",
        "sliding_form": f"no pos, {SUBSCRIPTIONS} room_subscriptions (timelines 20, 1, ...), "
        "extensions.receipts",
        "plan_users": len(layout.rooms_of),
        "load_average_1m_before_after": [round(load_before, 2), round(load_after, 2)],
        # What this scenario runs beside the API process; anything else on the machine shows
        # in the load average above.
        "beside": "the Kafka broker, wrk (1 thread, 32 connections), the bench process (waiting)"
        + (f"; {api_processes} API processes on one port" if api_processes > 1 else ""),
    }
