"""The benchmark scenarios. Each starts its own worker on fresh topics, and returns a result.

All load goes to 127.0.0.1 (or the configured cluster), every loop is bounded in count and
time, and long phases show a progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from tqdm import tqdm

from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.bench.measure import (
    end_offsets,
    group_caught_up,
    groups_caught_up,
    latency_summary,
    percentile,
    read_topic,
    record_times,
)
from receipt_streams.bench.process import (
    WorkerProcess,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    machine_steal_seconds,
    worker_settings,
)
from receipt_streams.bench.workload import Workload, WorkloadSpec
from receipt_streams.bench.wrk import post_at_rate, wrk_path
from receipt_streams.config import Settings

LOCAL = "hs0"


@dataclass
class Bench:
    bootstrap: str
    seed: int = 1
    partitions: int = 4
    guarantee: str = "exactly_once"  # RECEIPT_STREAMS_PROCESSING_GUARANTEE of the workers
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rs-bench-")))

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "partitions": self.partitions,
            "server_name": LOCAL,
            "grace_period_s": 30.0,
            "tick_interval_s": 1.0,
            "commit_interval_s": 1.0,
            "session_timeout_s": 10.0,
            "rate_limit_per_s": 0.0,
            "sync_rate_limit_per_s": 0.0,
            "log_level": "WARNING",
            "processing_guarantee": self.guarantee,
        }
        base.update(overrides)
        return worker_settings(self.bootstrap, self.workdir, **base)

    def worker(self, s: Settings, name: str) -> WorkerProcess:
        return WorkerProcess(s, self.workdir / f"{name}.log")


Row = tuple[str, bytes, bytes] | tuple[str, bytes, bytes, int]  # topic, key, value[, partition]


async def _produce(bootstrap: str, records: list[Row], label: str) -> float:
    """Send everything as fast as the client allows; seconds taken. A record may name its
    partition (a table changelog follows its input's partitioning, not the key's hash)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for topic, key, value, *partition in tqdm(records, desc=label, unit="rec", leave=False):
            part = partition[0] if partition else None
            pending.append(await producer.send(topic, value, key=key, partition=part))
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def _setup_records(s: Settings, work: Workload) -> list[tuple[str, bytes, bytes]]:
    topics = {"membership": s.topic_membership, "events": s.topic_events}
    return [(topics[kind], v["room_id"].encode(), orjson.dumps(v)) for kind, v in work.setup]


async def _wait(predicate: Any, timeout: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    with tqdm(desc=what, unit="s", leave=False, total=int(timeout)) as bar:
        while not await predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done in {timeout:.0f} s")
            await asyncio.sleep(step)
            bar.update(step)


# --- fold ----------------------------------------------------------------------------------


async def _create_topic(bootstrap: str, topic: str) -> None:
    """One partition, as the broker's auto-creation made it (the ceiling measured in earlier
    runs), but created first: a producer sending to a topic not there yet logs an ERROR."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def passthrough(bootstrap: str, topics: list[str], total: int, out_topic: str) -> float:
    """The ceiling: plain aiokafka consume -> orjson.loads -> produce, same records."""
    await _create_topic(bootstrap, out_topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=10_000,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await consumer.start()
    await producer.start()
    try:
        tps = [tp for tp in await end_offsets(bootstrap, topics)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, pending = 0, []
        t0 = time.perf_counter()
        with tqdm(total=total, desc="passthrough", unit="rec", leave=False) as bar:
            while seen < total:
                batch = await consumer.getmany(timeout_ms=1000)
                for msgs in batch.values():
                    for m in msgs:
                        value = orjson.loads(m.value)
                        pending.append(
                            await producer.send(out_topic, orjson.dumps(value), key=m.key)
                        )
                    seen += len(msgs)
                    bar.update(len(msgs))
                if len(pending) > 20_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if time.perf_counter() - t0 > 600:
                    raise TimeoutError("passthrough did not finish in 600 s")
            await asyncio.gather(*pending)
        return time.perf_counter() - t0
    finally:
        await consumer.stop()
        await producer.stop()


async def bench_fold(b: Bench, receipts: int, relays_apart: bool = True) -> dict[str, Any]:
    # The table worker as deployed beside `receipt-streams api` and `relays` processes: no
    # /sync view, and the relays in a process of their own (on the other core); or, with
    # relays_apart off, the relays in the worker's own event loop.
    s = b.settings(serve_api=False, run_relays=not relays_apart)
    work = Workload(WorkloadSpec(receipts=receipts, seed=b.seed), LOCAL)
    await ensure_topics(s)
    setup = _setup_records(s, work)
    rows = [(s.topic_client, r["room_id"].encode(), orjson.dumps(r)) for r in work.receipts()]
    await _produce(b.bootstrap, setup + rows, "preload")

    inputs = [s.topic_membership, s.topic_events, s.topic_client]
    # The ceiling is measured before the fold and again after it, and averaged: on a shared
    # machine a burst of other work during one of the two moves the ratio less.
    before_s = await passthrough(
        b.bootstrap, inputs, len(setup) + len(rows), s.topic_client + ".passthrough"
    )

    # The relays first, ready (imports done, groups joining) before the worker starts its
    # fold, so that their start-up does not take the fold's core.
    relays = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port()}),
        b.workdir / "fold-relays.log",
        "relays",
    )
    worker = b.worker(s, "fold")
    groups = {
        s.app_id: inputs,
        f"{s.app_id}-sync-deltas": [s.changelog_receipts],
        f"{s.app_id}-federation-edus": [s.topic_outbox],
    }
    try:
        if relays_apart:
            relays.start().wait_ready(120)
        worker.start()

        await _wait(lambda: groups_caught_up(b.bootstrap, groups), 1800, "fold", step=1.0)
        first = await record_times(b.bootstrap, [s.changelog_state], first=True)
        last = await record_times(b.bootstrap, [s.topic_sync, s.topic_edus], first=False)
        folded = await record_times(
            b.bootstrap, [s.changelog_receipts, s.changelog_state, s.topic_outbox], first=False
        )
        ends = await end_offsets(b.bootstrap, [s.topic_sync, s.topic_edus, s.topic_dlq])
    finally:
        relays.stop()
        worker.stop()
    after_s = await passthrough(
        b.bootstrap, inputs, len(setup) + len(rows), s.topic_client + ".passthrough-after"
    )
    ceiling_s = (before_s + after_s) / 2
    assert first is not None and last is not None and folded is not None
    fold_s = last - first
    out = {
        name: sum(v for tp, v in ends.items() if tp.topic == topic)
        for name, topic in (("deltas", s.topic_sync), ("edus", s.topic_edus), ("dlq", s.topic_dlq))
    }
    return {
        "receipts": receipts,
        "setup_records": len(setup),
        "fold_seconds": fold_s,
        # Of which the worker's part (its first changelog write to its last one); the rest is
        # the relays' tail: their last windows and the pacing of big rooms.
        "worker_seconds": folded - first,
        "fold_receipts_per_s": receipts / fold_s,
        "passthrough_seconds": ceiling_s,
        "passthrough_seconds_before": before_s,
        "passthrough_seconds_after": after_s,
        "passthrough_receipts_per_s": receipts / ceiling_s,
        "ratio": ceiling_s / fold_s,
        **out,
        "partitions": b.partitions,
        "relays": "apart" if relays_apart else "in the worker",
        "guarantee": b.guarantee,
    }


# --- ingest and latency ----------------------------------------------------------------------


@dataclass
class ApiDeployment:
    """The roles split as deployed (deploy/kubernetes): a table worker (no client API), a
    relays process and an API process, beside the broker, on the machine's two cores."""

    worker: WorkerProcess
    relays: WorkerProcess
    api: WorkerProcess
    token_of: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api.settings.web_port}/_matrix/client/v3"

    def stop(self) -> None:
        self.api.stop()
        self.relays.stop()
        self.worker.stop()


async def _api_deployment(b: Bench, work: Workload, name: str) -> ApiDeployment:
    tokens = {f"tok-{u}": u for u in work.local_users()}
    path = b.workdir / f"{name}-tokens.json"
    path.write_bytes(orjson.dumps(tokens))
    s = b.settings(tokens_file=path, serve_api=False, run_relays=False)
    await ensure_topics(s)
    await _produce(b.bootstrap, _setup_records(s, work), "setup")
    worker = b.worker(s, name).start()
    relays = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port()}),
        b.workdir / f"{name}-relays.log",
        "relays",
    ).start()
    api_settings = s.model_copy(
        update={"web_port": free_port(), "admin_port": free_port(), "serve_api": True}
    )
    api = WorkerProcess(api_settings, b.workdir / f"{name}-api.log", command="api").start()
    deployment = ApiDeployment(worker, relays, api, {u: t for t, u in tokens.items()})
    try:
        worker.wait_ready(120)
        relays.wait_ready(120)
        # Measure steady state: every join and event folded before the load starts.
        setup_topics = [s.topic_membership, s.topic_events]
        await _wait(lambda: group_caught_up(b.bootstrap, s.app_id, setup_topics), 600, "setup")
        api.wait_ready(120)
    except BaseException:
        deployment.stop()
        raise
    return deployment


async def bench_ingest(b: Bench, requests: int, concurrency: int) -> dict[str, Any]:
    work = Workload(WorkloadSpec(receipts=requests, seed=b.seed), LOCAL)
    deployment = await _api_deployment(b, work, "ingest")
    base, token_of = deployment.base, deployment.token_of
    bodies = list(work.receipts())
    latencies: list[float] = []
    failures = 0
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            queue: asyncio.Queue[dict] = asyncio.Queue()
            for body in bodies:
                queue.put_nowait(body)
            bar = tqdm(total=len(bodies), desc="ingest", unit="req", leave=False)

            async def client() -> None:
                nonlocal failures
                while not queue.empty():
                    r = queue.get_nowait()
                    url = f"{base}/rooms/{r['room_id']}/receipt/{r['receipt_type']}/{r['event_id']}"
                    body = {"thread_id": r["thread_id"]} if "thread_id" in r else {}
                    t0 = time.perf_counter()
                    async with session.post(
                        url,
                        data=orjson.dumps(body),
                        headers={"Authorization": f"Bearer {token_of[r['user_id']]}"},
                    ) as resp:
                        await resp.read()
                        ok = resp.status == 200
                    latencies.append((time.perf_counter() - t0) * 1000)
                    failures += not ok
                    bar.update(1)

            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 900)
            elapsed = time.perf_counter() - t0
            bar.close()
    finally:
        deployment.stop()
    accepted = len(latencies) - failures
    return {
        "requests": len(latencies),
        "accepted": accepted,
        "failed": failures,
        "concurrency": concurrency,
        "seconds": elapsed,
        "accepted_per_s": accepted / elapsed,
        **latency_summary(latencies),
    }


async def bench_latency(
    b: Bench, rate: float, duration: float, rooms: int = 20, senders_per_room: int = 40
) -> dict[str, Any]:
    """POSTs from wrk at `rate`; one member of each room long-polls /sync and stamps when
    each receipt first shows. Latency: from the POST leaving wrk to that /sync answer."""
    spec = WorkloadSpec(
        receipts=1, seed=b.seed, events_per_room=int(rate * duration / rooms / 2) + 20
    )
    work = Workload(spec, LOCAL)
    wrk_path()  # before any set-up: say at once when the load generator is missing
    deployment = await _api_deployment(b, work, "latency")
    chosen = [room for room in work.rooms if len(room.local_members) >= 2][:rooms]
    senders = [
        (room, user) for room in chosen for user in room.local_members[1 : senders_per_room + 1]
    ]
    plan: list[tuple[str, str, str]] = []  # room, user, event: one receipt per request
    step = [0] * len(senders)
    for n in range(int(rate * duration * 1.2)):
        i = n % len(senders)
        room, user = senders[i]
        events = room.main_events
        plan.append((room.room_id, user, events[min(step[i], len(events) - 1)]))
        step[i] += 1
    seen: dict[tuple[str, str, str], float] = {}  # wall-clock ms
    stop = asyncio.Event()
    base, token_of = deployment.base, deployment.token_of
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def watch(room: Any) -> None:
                headers = {"Authorization": f"Bearer {token_of[room.local_members[0]]}"}
                async with session.get(f"{base}/sync", headers=headers) as resp:
                    since = (await resp.json())["next_batch"]
                while not stop.is_set():
                    async with session.get(
                        f"{base}/sync", headers=headers, params={"since": since, "timeout": "2000"}
                    ) as resp:
                        body = await resp.json()
                    at = time.time() * 1000
                    since = body["next_batch"]
                    room_body = body["rooms"]["join"].get(room.room_id, {})
                    for event in room_body.get("ephemeral", {}).get("events", []):
                        for event_id, by_type in event["content"].items():
                            for user in by_type.get("m.read", {}):
                                seen.setdefault((room.room_id, user, event_id), at)

            watchers = [asyncio.create_task(watch(room)) for room in chosen]
            await asyncio.sleep(1.0)
            cpu_before = _cpu_snapshot(deployment)
            fold_before = _fold_sums(deployment.worker)
            path = base.split("//", 1)[1].split("/", 1)[1]
            result = await post_at_rate(
                base.split("/_matrix", 1)[0],
                [
                    (f"/{path}/rooms/{room_id}/receipt/m.read/{event_id}", token_of[user])
                    for room_id, user, event_id in plan
                ],
                rate,
                duration,
                b.workdir / "latency-wrk",
            )
            cpu = _cpu_used(cpu_before, _cpu_snapshot(deployment))
            fold = {
                k: v - fold_before.get(k, 0.0) for k, v in _fold_sums(deployment.worker).items()
            }
            sent = {plan[i]: at for i, at in result.sent_at_ms.items() if i < len(plan)}
            deadline = time.perf_counter() + 10
            while time.perf_counter() < deadline and not set(sent) <= set(seen):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the watchers fill `seen`; give stragglers 10 s
            stop.set()
            await asyncio.gather(*watchers, return_exceptions=True)
        inputs = await read_topic(b.bootstrap, deployment.worker.settings.topic_client)
        accepted = {
            (v["room_id"], v["user_id"], v["event_id"]): r.timestamp
            for r in inputs
            for v in (orjson.loads(r.value),)
        }
        changelog = await read_topic(b.bootstrap, deployment.worker.settings.changelog_receipts)
    finally:
        deployment.stop()
    lat = [seen[k] - t for k, t in sent.items() if k in seen]
    stages = _latency_stages(sent, accepted, changelog, seen)
    times = sorted(sent.values())
    span_s = (times[-1] - times[0]) / 1000 if len(times) > 1 else float("nan")
    return {
        "offered_rate_per_s": rate,
        "achieved_rate_per_s": (len(times) - 1) / span_s if len(times) > 1 else 0.0,
        "sent": len(sent),
        # Accepted (in the input topic) but never shown by /sync: a failure.
        "missing": len((set(sent) & accepted.keys()) - set(seen)),
        # Written by wrk as its time ran out, never answered: not accepted, not measured.
        "cut_off": len(set(sent) - accepted.keys()),
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "rooms": len(chosen),
        **latency_summary(lat),
        "post_p50_ms": result.p50_ms,
        "post_p99_ms": result.p99_ms,
        **stages,
        # What the load cost, and who paid (CPU seconds per second of load: 2.0 is both cores).
        **cpu,
        # The fold's checkpoints during the load: how many, and how long each took.
        "fold_checkpoints": fold.get("checkpoints", math.nan),
        "fold_checkpoint_mean_ms": 1000
        * fold.get("checkpoint_s", math.nan)
        / max(1.0, fold.get("checkpoints", math.nan)),
        "fold_batch_mean_records": fold.get("records", math.nan)
        / max(1.0, fold.get("batches", math.nan)),
        "client": "wrk",
    }


def _fold_sums(worker: WorkerProcess) -> dict[str, float]:
    checkpoints = worker.metric_sums("receipt_streams_checkpoint_seconds")
    batches = worker.metric_sums("receipt_streams_batch_records")
    return {
        "checkpoints": checkpoints.get("count", math.nan),
        "checkpoint_s": checkpoints.get("sum", math.nan),
        "batches": batches.get("count", math.nan),
        "records": batches.get("sum", math.nan),
    }


def _cpu_snapshot(d: ApiDeployment) -> dict[str, float]:
    busy, total = machine_busy_seconds()
    return {
        "worker": d.worker.cpu_seconds(),
        "relays": d.relays.cpu_seconds(),
        "api": d.api.cpu_seconds(),
        "bench": cpu_seconds(os.getpid()),
        "machine": busy,
        "steal": machine_steal_seconds(),  # part of `machine`: the hypervisor ran others
        "wall": total / (os.cpu_count() or 1),
    }


def _cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    wall = after["wall"] - before["wall"]
    return {f"cpu_{name}": (after[name] - before[name]) / wall for name in before if name != "wall"}


def _latency_stages(
    sent: dict[tuple[str, str, str], float],
    accepted: dict[tuple[str, str, str], int],
    changelog: list[Any],
    seen: dict[tuple[str, str, str], float],
) -> dict[str, float]:
    """Where a receipt's time went, by the records' own timestamps (one clock, one machine):
    to the input topic (the API), to its changelog write (the fold's wait and work), and
    from there to /sync (the commit, the API's read of the changelog, the long-poll)."""
    written: dict[tuple[str, str, str], int] = {}
    for record in changelog:
        if record.value is None:
            continue
        room, user, _, _ = orjson.loads(record.key)
        written.setdefault((room, user, orjson.loads(record.value)["event_id"]), record.timestamp)
    keys = [k for k in sent if k in accepted and k in written and k in seen]
    out: dict[str, float] = {}
    for name, values in (
        ("api", [accepted[k] - sent[k] for k in keys]),
        ("fold", [written[k] - accepted[k] for k in keys]),
        ("visible", [seen[k] - written[k] for k in keys]),
    ):
        out[f"stage_{name}_p50_ms"] = percentile(values, 50)
        out[f"stage_{name}_p99_ms"] = percentile(values, 99)
    return out


# --- recovery --------------------------------------------------------------------------------


def _ready_state(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read())
    except OSError:
        return {"ready": False, "tables": False, "sync_view": False}


def _time_to_ready(worker: WorkerProcess, timeout: float = 600) -> dict[str, float]:
    t0 = time.monotonic()
    worker.start()
    tables_at = None
    while time.monotonic() - t0 < timeout:
        state = _ready_state(worker.settings.admin_port)  # the detail (`tables`) is there
        if state.get("tables") and tables_at is None:
            tables_at = time.monotonic() - t0
        if state.get("ready"):
            return {
                "tables_ready_s": tables_at or time.monotonic() - t0,
                "ready_s": time.monotonic() - t0,
            }
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"worker not ready in {timeout} s")


async def bench_recovery(b: Bench, keys: int, serve_api: bool = True) -> dict[str, Any]:
    """With serve_api the worker also builds its /sync view: on disk by default (read again
    only past its local copy at the second start), every key in memory with
    RECEIPT_STREAMS_READ_STORE=memory."""
    s = b.settings(serve_api=serve_api)
    await ensure_topics(s)
    rooms = max(1, keys // 1000)
    records: list[Row] = []
    for i in range(keys):
        room, user = f"!rec{i % rooms}:{LOCAL}", f"@u{i // rooms}:{LOCAL}"
        key = orjson.dumps([room, user, "m.read", None])
        value = orjson.dumps({"event_id": f"$e{i}", "stream_pos": i, "ts": i, "data": {"ts": i}})
        partition = (murmur2(room.encode()) & 0x7FFFFFFF) % s.partitions
        records.append((s.changelog_receipts, key, value, partition))
    await _produce(b.bootstrap, records, "changelog")
    del records
    worker = b.worker(s, "recovery")
    rebuild = _time_to_ready(worker)
    assert worker.stop() == 0
    local = _time_to_ready(worker)
    assert worker.stop() == 0
    return {
        "keys": keys,
        "rebuild_tables_s": rebuild["tables_ready_s"],
        "rebuild_ready_s": rebuild["ready_s"],
        "local_tables_s": local["tables_ready_s"],
        "local_ready_s": local["ready_s"],
    }
