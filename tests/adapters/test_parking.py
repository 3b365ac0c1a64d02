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

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from receipt_streams.adapters.sending import partition_of
from receipt_streams.config import Settings
from receipt_streams.core.dlq import DlqBounds
from tests.adapters.test_poison import CANARY, CANARY_WITHIN_S, canary_folds, dlq_records
from tests.support.scenario import Room
from tests.support.worker import WorkerProcess, dumps, produce, worker_settings

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


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def create_small_outbox(s: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    await admin.start()
    try:
        config = {"max.message.bytes": str(OUTBOX_MAX_BYTES)}
        await admin.create_topics([NewTopic(s.topic_outbox, s.partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    return worker_settings(kafka_bootstrap, tmp_path)


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        yield w
    finally:
        w.stop()


async def test_a_receipt_whose_output_the_broker_refuses_is_parked(
    settings: Settings, worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = settings
    await create_small_outbox(s)
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

    _, text = get(f"http://127.0.0.1:{s.admin_port}/metrics")
    metrics = text.decode()
    line = f'receipt_streams_parked_total{{reason="unproducible",topic="{s.topic_client}"}} 1.0'
    assert line in metrics
    assert 'receipt_streams_isolations_total{loop="fold"}' in metrics
    assert 'receipt_streams_loop_restarts_total{loop="fold"}' not in metrics  # no restart
