"""A record whose output cannot be produced is parked, and the stream goes on (issue 12).

Real broker, real worker process. The outbox topic is created with a small
`max.message.bytes`, so that the outbox record of one receipt (in a room with hundreds of
remote servers, its destinations) is refused by the broker: before parking, that batch
failed, the fold restarted from the last commit and failed again, forever. Now the batch is
split until the receipt is found, the receipt is parked in the DLQ (bounded record,
`unproducible`), and a canary receipt sent after it on the same partition folds within
seconds, without a restart; `/metrics` and `/readyz` show the parked record.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from receipt_streams.adapters.effects import Router
from receipt_streams.adapters.engine.runner import FoldEngine
from receipt_streams.adapters.parking import ParkedLog
from receipt_streams.adapters.sending import partition_of
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.bench.measure import group_caught_up
from receipt_streams.config import Settings
from receipt_streams.core.dlq import DlqBounds
from tests.adapters.test_poison import CANARY, CANARY_WITHIN_S, canary_folds, dlq_records
from tests.support.http import get
from tests.support.scenario import Room
from tests.support.worker import TopicReader, WorkerProcess, dumps, produce, worker_settings

pytestmark = pytest.mark.broker

LOCAL = "@a:hs1"
OUTBOX_MAX_BYTES = 8_192  # a normal outbox record is a few hundred bytes


def remote_members(room: Room, n: int) -> list[tuple[str, bytes, dict[str, Any]]]:
    return [room.member(f"@u{i}:s{i:04}.far-away-homeserver.example") for i in range(n)]


def same_partition_room(s: Settings, other: Room, prefix: str) -> Room:
    target = partition_of(other.key(), s.partitions)
    for i in range(1000):
        room = Room(s, f"!{prefix}{i}:hs1")
        if partition_of(room.key(), s.partitions) == target:
            return room
    raise AssertionError("no room id on that partition")


async def create_small_topic(s: Settings, topic: str, max_bytes: int) -> None:
    """`topic`, created before the worker does, with a small `max.message.bytes`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_bytes)}
        await admin.create_topics([NewTopic(topic, s.partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


def parked_metric(s: Settings, reason: str, topic: str) -> float | None:
    _, text = get(f"http://127.0.0.1:{s.admin_port}/metrics")
    prefix = f'receipt_streams_parked_total{{reason="{reason}",topic="{topic}"}} '
    for line in text.decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    guarantee = getattr(request, "param", "exactly_once")
    return worker_settings(kafka_bootstrap, tmp_path, processing_guarantee=guarantee)


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.parametrize("settings", ["exactly_once", "at_least_once"], indirect=True)
async def test_a_receipt_whose_output_the_broker_refuses_is_parked(
    settings: Settings, worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = settings
    await create_small_topic(s, s.topic_outbox, OUTBOX_MAX_BYTES)
    worker.start().wait_ready()

    room = Room(s, "!refused:hs1")
    canary_room = same_partition_room(s, room, "canary")
    setup = [room.member(LOCAL), *remote_members(room, 300), room.event("$e1")]
    await produce(kafka_bootstrap, [*setup, canary_room.member(CANARY)])
    # Its outbox record names 300 destinations: about 12 KB, over the topic's limit. Records
    # before and after it on the same partition, likely in the same batch, go through.
    poison = room.receipt(LOCAL, "m.read", "$e1", 1)
    filler = [canary_room.event(f"$f{i}") for i in range(40)]
    await produce(kafka_bootstrap, [*filler[:20], poison, *filler[20:]])

    assert await canary_folds(kafka_bootstrap, worker, canary_room, "$canary") < CANARY_WITHIN_S

    raw = dumps(poison[2])

    def parked(values: list[dict[str, Any]]) -> bool:
        return any(v["error"]["code"] == "unproducible" for v in values)

    records = await dlq_records(kafka_bootstrap, worker, parked, "the parked receipt")
    mine = [(k, orjson.loads(v), v) for k, v in records if b"unproducible" in v]
    assert len(mine) == 1, mine
    key, record, value = mine[0]
    assert key.decode() == s.topic_client == record["topic"]
    assert record["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["value_size"] == len(raw) and not record["value_truncated"]
    assert "MessageSizeTooLarge" in record["error"]["message"]
    assert len(value) <= DlqBounds().record_bytes

    status, body = get(f"http://127.0.0.1:{s.admin_port}/readyz")
    assert status == 200, body  # parking is recovery, not stuckness
    ready = orjson.loads(body)
    assert ready["stuck"] == [] and ready["parked"]["recent"] == 1
    assert ready["parked"]["last"]["reason"] == "unproducible"
    assert ready["parked"]["last"]["topic"] == s.topic_client
    status, body = get(f"http://127.0.0.1:{s.web_port}/readyz")
    assert (status, orjson.loads(body)) == (200, {"ready": True}), "no detail to clients"

    assert parked_metric(s, "unproducible", s.topic_client) == 1.0
    _, text = get(f"http://127.0.0.1:{s.admin_port}/metrics")
    metrics = text.decode()
    assert 'receipt_streams_isolations_total{loop="fold"}' in metrics
    assert 'receipt_streams_loop_restarts_total{loop="fold"}' not in metrics  # no restart


async def test_a_delta_the_broker_refuses_is_parked_and_the_relay_goes_on(
    settings: Settings, worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    """The sync topic takes 4 KB: a delta of 200 receipts (about 20 KB) is refused. The
    relay probes its outputs, parks the refused delta, and publishes the rest."""
    s = settings
    await create_small_topic(s, s.topic_sync, 4_096)
    worker.start().wait_ready()

    room = Room(s, "!crowd:hs1")
    canary_room = same_partition_room(s, room, "canary")
    users = [f"@user{i:03}:hs1" for i in range(200)]
    setup = [*(room.member(u) for u in users), room.event("$e1"), canary_room.member(CANARY)]
    await produce(kafka_bootstrap, setup)
    await produce(kafka_bootstrap, [room.receipt(u, "m.read", "$e1", 1) for u in users])

    assert await canary_folds(kafka_bootstrap, worker, canary_room, "$canary") < CANARY_WITHIN_S

    def parked(values: list[dict[str, Any]]) -> bool:
        return any(v.get("output", {}) and v["output"]["topic"] == s.topic_sync for v in values)

    records = await dlq_records(kafka_bootstrap, worker, parked, "the parked delta")
    mine = [orjson.loads(v) for _, v in records if orjson.loads(v).get("output")]
    assert mine and all(r["error"]["code"] == "unproducible" for r in mine)
    for record in mine:
        assert record["topic"] == s.changelog_receipts and record["offset"] == -1
        assert orjson.loads(record["value"])["room_id"] == room.room_id  # the delta itself
        assert record["value_size"] > 4_096
    assert parked_metric(s, "unproducible", s.changelog_receipts) == len(mine)
    status, body = get(f"http://127.0.0.1:{s.admin_port}/readyz")
    assert status == 200, body
    _, text = get(f"http://127.0.0.1:{s.admin_port}/metrics")
    assert 'receipt_streams_loop_restarts_total{loop="sync-deltas"}' not in text.decode()


async def test_a_record_whose_processing_raises_is_parked_in_process(
    settings: Settings, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug outside the per-record guard (simulated: the router raises for one record)
    fails the batch while it is folded: the batch is split, that record parked as
    `poison_batch`, the records around it folded, with no restart."""
    s = settings
    original = Router.handle

    def handle(self: Router, record: Any, now: int) -> Any:
        if record.value and b"$boom" in record.value:
            raise RuntimeError("a bug this record hits")
        return original(self, record, now)

    monkeypatch.setattr(Router, "handle", handle)
    ParkedLog.clear()
    await ensure_topics(s)
    engine = FoldEngine(s)
    running = asyncio.create_task(engine.run_forever())
    try:
        room = Room(s, "!boom:hs1")
        events = [room.event(f"$e{i}") for i in range(10)]
        await produce(
            kafka_bootstrap,
            [room.member(LOCAL), *events[:5], room.event("$boom"), *events[5:]],
        )
        await produce(kafka_bootstrap, [room.receipt(LOCAL, "m.read", "$e9", 1)])

        def folded(values: list[Any]) -> bool:
            return any(v.get("event_id") == "$e9" for v in values)

        async with TopicReader(kafka_bootstrap, s.changelog_receipts) as changelog:
            await changelog.wait_for(
                lambda r: folded([orjson.loads(m.value) for m in r if m.value]), timeout=30
            )
        async with TopicReader(kafka_bootstrap, s.topic_dlq) as dlq:
            await dlq.wait_for(lambda r: bool(r), timeout=10)
            await dlq.poll(500)
            records = [orjson.loads(m.value) for m in dlq.records]
        assert [r["error"]["code"] for r in records] == ["poison_batch"]
        assert records[0]["topic"] == s.topic_events and "$boom" in records[0]["value"]
        assert "a bug this record hits" in records[0]["error"]["message"]
        assert ParkedLog.summary()["last"]["reason"] == "poison_batch"
        assert engine.health.failures == 0 and engine.ready()
        # Every event but $boom is in the room state: a receipt on each is applied at once.
        state = engine.tasks[partition_of(room.key(), s.partitions)].processor.state
        assert all(state.event(room.room_id, f"$e{i}") is not None for i in range(10))
        assert state.event(room.room_id, "$boom") is None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_an_output_over_the_producer_limit_becomes_a_dlq_record(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """With `producer_max_request_bytes` at 64 KiB, a receipt whose outbox record names 400
    servers of 200 bytes (about 80 KB) is folded, and its outbox record becomes a bounded
    DLQ record (`unproducible`, `output.topic`) before it is sent: nothing fails."""
    s = worker_settings(kafka_bootstrap, tmp_path, producer_max_request_bytes=65_536)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        room = Room(s, "!wide:hs1")
        servers = [f"s{i:03}." + "x" * 190 + ".example" for i in range(400)]
        members = [room.member(f"@u:{server}") for server in servers]
        await produce(kafka_bootstrap, [room.member(LOCAL), *members, room.event("$e1")])
        await produce(kafka_bootstrap, [room.member(CANARY)])
        await produce(kafka_bootstrap, [room.receipt(LOCAL, "m.read", "$e1", 1)])

        assert await canary_folds(kafka_bootstrap, worker, room, "$canary") < CANARY_WITHIN_S

        def parked(values: list[dict[str, Any]]) -> bool:
            return any(v.get("output") for v in values)

        records = await dlq_records(kafka_bootstrap, worker, parked, "the outbox record")
        # The local user's and the canary's (same room): each outbox record is too large.
        # The input named is the record whose processing made it (the canary's receipt may
        # have waited for its event, and been folded when the event came).
        mine = [(v, orjson.loads(v)) for _, v in records if orjson.loads(v).get("output")]
        (local,) = [r for _, r in mine if f'"user_id":"{LOCAL}"' in r["value"]]
        assert local["topic"] == s.topic_client
        for raw, record in mine:
            assert record["output"] == {"topic": s.topic_outbox}
            assert record["error"]["code"] == "unproducible"
            assert record["topic"] in (s.topic_client, s.topic_events)
            assert record["value_size"] > 65_536 and record["value_truncated"]
            assert len(raw) <= DlqBounds().record_bytes
        counted = [parked_metric(s, "unproducible", t) for t in (s.topic_client, s.topic_events)]
        assert sum(n or 0 for n in counted) == len(mine)
        # The receipt itself was folded: it is in a delta.
        async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:
            await sync.wait_for(
                lambda _: any(
                    LOCAL in str(v.get("receipt", {}).get("content", {}).get("$e1", {}))
                    for v in sync.values()
                ),
                timeout=10,
            )
    finally:
        worker.stop()


async def test_faust_parks_an_output_the_broker_refuses(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The faust engine sends each output on its own and Faust drops a refused one with a
    warning: it is now sent once more, then parked (its key and value, `output.topic`); the
    receipt itself is folded, and the fold goes on."""
    s = worker_settings(kafka_bootstrap, tmp_path, engine="faust")
    await create_small_topic(s, s.topic_outbox, OUTBOX_MAX_BYTES)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        room = Room(s, "!refused:hs1")
        canary_room = same_partition_room(s, room, "canary")
        setup = [room.member(LOCAL), *remote_members(room, 300), room.event("$e1")]
        await produce(kafka_bootstrap, [*setup, canary_room.member(CANARY)])
        # Faust folds each topic as it comes (no order across topics): let the joins in first.
        deadline = time.monotonic() + 30
        while not await group_caught_up(kafka_bootstrap, s.app_id, [s.topic_membership]):
            assert time.monotonic() < deadline, worker.tail()
            await asyncio.sleep(0.2)
        await produce(kafka_bootstrap, [room.receipt(LOCAL, "m.read", "$e1", 1)])

        assert await canary_folds(kafka_bootstrap, worker, canary_room, "$canary") < 30

        def parked(values: list[dict[str, Any]]) -> bool:
            return any(v.get("output") for v in values)

        records = await dlq_records(kafka_bootstrap, worker, parked, "the refused outbox record")
        (raw,) = [v for _, v in records if orjson.loads(v).get("output")]
        record = orjson.loads(raw)
        assert record["output"] == {"topic": s.topic_outbox}
        assert record["error"]["code"] == "unproducible" and record["topic"] == s.topic_client
        assert "MessageSizeTooLarge" in record["error"]["message"]
        assert f'"user_id":"{LOCAL}"' in record["value"] and len(raw) <= DlqBounds().record_bytes
        assert parked_metric(s, "unproducible", s.topic_client) == 1.0
    finally:
        worker.stop()
