"""Poison records on the real broker (issue 12): no single record, nor a flood of held ones,
can stop the fold. A canary receipt sent after the poison folds within seconds, and the DLQ
holds a bounded record for each poison, with its original size and sha256.

Before the DLQ was bounded, the DLQ copy of a 660 KB record of double quotes escaped to
1.32 MB, the broker refused it, and the worker restarted on the same batch forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from receipt_streams.bench.measure import group_caught_up
from receipt_streams.core.dlq import DlqBounds
from tests.support.scenario import Room
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, CANARY = "@a:hs1", "@canary:hs1"
RECORD_MAX = DlqBounds().record_bytes  # the documented bound, with the default settings
CANARY_WITHIN_S = 20.0


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    s = worker_settings(kafka_bootstrap, tmp_path)
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        yield w
    finally:
        w.stop()


async def canary_folds(bootstrap: str, worker: WorkerProcess, room: Room, event_id: str) -> float:
    """Send a canary receipt; seconds until its delta is on the sync topic and the fold has
    committed every input (a delta alone proves little: a batch that fails to be made durable
    may have sent its changelog writes before failing, and is replayed forever)."""
    s = worker.settings
    t0 = time.monotonic()
    await produce(bootstrap, [room.event(event_id), room.receipt(CANARY, "m.read", event_id, 1)])
    async with TopicReader(bootstrap, worker.settings.topic_sync) as sync:
        await sync.wait_for(
            lambda _: any(
                event_id in v.get("receipt", {}).get("content", {}) for v in sync.values()
            ),
            timeout=CANARY_WITHIN_S + 10,
            what=f"the canary on {event_id}\n{worker.tail()}",
        )
    inputs = [s.topic_client, s.topic_membership, s.topic_events, s.topic_federation]
    while not await group_caught_up(bootstrap, s.app_id, inputs):
        assert time.monotonic() - t0 < CANARY_WITHIN_S + 10, (
            f"inputs not committed\n{worker.tail()}"
        )
        await asyncio.sleep(0.5)
    assert "fold failed" not in worker.log_path.read_text(errors="replace"), worker.tail()
    return time.monotonic() - t0


async def dlq_records(
    bootstrap: str, worker: WorkerProcess, done: Any, what: str, timeout: float = 30
) -> list[tuple[bytes, bytes]]:
    """(key, value) of the DLQ records, once `done(values)` holds."""
    async with TopicReader(bootstrap, worker.settings.topic_dlq) as dlq:
        await dlq.wait_for(
            lambda r: done([orjson.loads(m.value) for m in r]),
            timeout=timeout,
            what=f"{what}\n{worker.tail()}",
        )
        return [(m.key, m.value) for m in dlq.records]


async def test_a_600_kb_record_on_each_input_cannot_stop_the_fold(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!poison:hs1")
    await produce(kafka_bootstrap, [room.member(A), room.member(CANARY), room.event("$e1")])
    receipt = room.receipt(A, "m.read", "$e1", 1)[2]
    poison: dict[str, tuple[bytes, bytes]] = {
        # The record: 330,000 quotes of thread_id, 660 KB once JSON-escaped.
        s.topic_client: (room.key(), orjson.dumps({**receipt, "thread_id": '"' * 330_000})),
        s.topic_membership: (
            room.key(),
            orjson.dumps({"room_id": room.room_id, "pad": "\x01" * 100_000}),  # 600 KB
        ),
        s.topic_events: (room.key(), b"\xff" + b"x" * 600_000),
        s.topic_federation: (
            b"evil.example",
            orjson.dumps({"origin": "evil.example", "pad": '"' * 300_000}),
        ),
    }
    for _, value in poison.values():
        assert len(value) >= 600_000
    await produce(kafka_bootstrap, [(t, k, v) for t, (k, v) in poison.items()])

    assert await canary_folds(kafka_bootstrap, worker, room, "$canary") < CANARY_WITHIN_S

    def all_there(values: list[dict[str, Any]]) -> bool:
        return {v["topic"] for v in values if v["error"]["code"] == "too_large"} >= set(poison)

    records = await dlq_records(kafka_bootstrap, worker, all_there, "the four poison records")
    for key, raw in records:
        record = orjson.loads(raw)
        assert len(raw) <= RECORD_MAX
        if record["error"]["code"] != "too_large":
            continue
        _, original = poison[record["topic"]]
        assert key.decode() == record["topic"]
        assert record["value_size"] == len(original) and record["value_truncated"]
        assert record["value_sha256"] == hashlib.sha256(original).hexdigest()


async def test_a_held_list_flood_cannot_stop_the_fold(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    """~420 receipts of a user with no known membership, held under one key: by count the
    list would pass 1 MB; by bytes it stops at its cap and the rest go to the DLQ."""
    s = worker.settings
    room = Room(s, "!flood:hs1")
    stranger = "@stranger:hs1"
    await produce(kafka_bootstrap, [room.member(CANARY), room.event("$e1")])
    flood = []
    for i in range(420):
        topic, key, value = room.receipt(stranger, "m.read", "$e1", i)
        flood.append((topic, key, {**value, "pad": f"{i:06}" + "p" * 2_600}))  # ~2.7 KB
    assert sum(len(orjson.dumps(v)) for *_, v in flood) > 1_100_000
    await produce(kafka_bootstrap, flood)

    assert await canary_folds(kafka_bootstrap, worker, room, "$canary") < CANARY_WITHIN_S

    def overflowed(values: list[dict[str, Any]]) -> bool:
        return sum(v["error"]["code"] == "held_overflow" for v in values) >= 300

    records = await dlq_records(kafka_bootstrap, worker, overflowed, "held_overflow records")
    assert all(len(raw) <= RECORD_MAX for _, raw in records)
    for changelog in (s.changelog_held, s.changelog_receipts, s.changelog_state):
        async with TopicReader(kafka_bootstrap, changelog) as log:
            while await log.poll(500):
                pass
            biggest = max((len(m.value or b"") for m in log.records), default=0)
        assert biggest <= s.held_max_bytes_per_key, changelog


async def test_a_600_entry_forged_edu_takes_at_most_twice_its_bytes(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    origin = "evil.example"
    users = {
        f"@victim{i}:hs1": {"event_ids": [f"$e{i}"], "data": {"ts": 1_700_000_000_000}}
        for i in range(600)
    }
    edu = {
        "origin": origin,
        "received_ts": 1_700_000_000_000,
        "edu": {"edu_type": "m.receipt", "content": {"!forged:hs1": {"m.read": users}}},
    }
    raw = json.dumps(edu).encode()
    assert 40_000 < len(raw) < 60_000
    await produce(kafka_bootstrap, [(s.topic_federation, origin.encode(), raw)])
    sha = hashlib.sha256(raw).hexdigest()

    def ours(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [v for v in values if v.get("edu", {}).get("sha256") == sha]

    def complete(values: list[dict[str, Any]]) -> bool:
        return sum(v["edu"]["entries"] for v in ours(values)) >= 600

    records = await dlq_records(kafka_bootstrap, worker, complete, "the EDU's DLQ records")
    mine = [(k, v) for k, v in records if orjson.loads(v).get("edu", {}).get("sha256") == sha]
    assert sum(orjson.loads(v)["edu"]["entries"] for _, v in mine) == 600
    assert sum(len(k) + len(v) for k, v in mine) <= 2 * len(raw)
    assert all(len(v) <= RECORD_MAX for _, v in mine)


async def test_a_forged_edu_rejected_in_its_rooms_takes_at_most_twice_its_bytes(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    """The origin's own users, for rooms it has no member in: accepted by the split, each
    entry rejected on its room's partition (`origin_not_in_room`). A record per entry took
    6 to 9 times the EDU's bytes (the issue 12 probe); they stay within twice, each with the
    EDU's hash, and the rest are counted. A canary folds after it."""
    s = worker.settings
    origin = "evil.example"
    content = {
        f"!forged{r}:hs1": {
            "m.read": {
                f"@v{r}_{i}:{origin}": {"event_ids": [f"$e{i}"], "data": {"ts": 1}}
                for i in range(100)
            }
        }
        for r in range(6)  # six rooms, so across partitions
    }
    edu = {"origin": origin, "received_ts": 1, "edu": {"edu_type": "m.receipt", "content": content}}
    raw = json.dumps(edu).encode()
    await produce(kafka_bootstrap, [(s.topic_federation, origin.encode(), raw)])
    sha = hashlib.sha256(raw).hexdigest()

    def rejected() -> int:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{s.admin_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith('receipt_streams_rejected_total{reason="origin_not_in_room"}')
        )

    deadline = time.monotonic() + 30
    while rejected() < 600:
        assert time.monotonic() < deadline, f"{rejected()} of 600 rejected\n{worker.tail()}"
        await asyncio.sleep(0.5)
    room = Room(s, "!canary:hs1")
    await produce(kafka_bootstrap, [room.member(CANARY)])
    assert await canary_folds(kafka_bootstrap, worker, room, "$c1") < CANARY_WITHIN_S
    records = await dlq_records(
        kafka_bootstrap,
        worker,
        lambda values: any(v.get("edu", {}).get("sha256") == sha for v in values),
        "a DLQ record of the EDU",
    )
    mine = [(k, v) for k, v in records if orjson.loads(v).get("edu", {}).get("sha256") == sha]
    assert sum(len(k) + len(v) for k, v in mine) <= 2 * len(raw)
    assert {orjson.loads(v)["error"]["code"] for _, v in mine} == {"origin_not_in_room"}
