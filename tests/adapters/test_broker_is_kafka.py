"""The session broker (``kafka_bootstrap``) is real Kafka: topics with partitions, keyed
partitioning, acks=all produce, consumer groups and committed offsets all behave as in
production. Everything else in the integration suite builds on these guarantees."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.broker

PARTITIONS = 3
KEYS = [f"!room{i}:example.org".encode() for i in range(12)]
PER_KEY = 5


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
        # Metadata propagates asynchronously even on one node; wait until the topic is visible.
        for _ in range(100):
            described = await admin.describe_topics([topic])
            if described and described[0]["error_code"] == 0 and described[0]["partitions"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"topic {topic} never became visible: {described}")
    finally:
        await admin.close()


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30) -> list:
    records: list = []
    async with asyncio.timeout(timeout):
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    return records


async def test_topic_is_created_with_the_requested_partition_count(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}-parts"
    await _create_topic(kafka_bootstrap, topic, PARTITIONS)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        assert described["topic"] == topic
        assert sorted(p["partition"] for p in described["partitions"]) == list(range(PARTITIONS))
        assert topic in await admin.list_topics()
    finally:
        await admin.close()


async def test_keyed_records_round_trip_and_committed_offsets_persist(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}-receipts"
    group = f"{unique_name}-group"
    await _create_topic(kafka_bootstrap, topic, PARTITIONS)

    # Produce PER_KEY values for each key with acks=all; remember where each one landed.
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    landed: dict[tuple[bytes, bytes], tuple[int, int]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for seq in range(PER_KEY):
            for key in KEYS:
                value = f"{key.decode()}#{seq}".encode()
                meta = await producer.send_and_wait(topic, value=value, key=key)
                sent[key].append(value)
                landed[(key, value)] = (meta.partition, meta.offset)
    finally:
        await producer.stop()

    total = len(KEYS) * PER_KEY
    key_partition = {key: landed[(key, sent[key][0])][0] for key in KEYS}
    # Keyed partitioning: all records of one key share a partition ...
    assert all(landed[(k, v)][0] == key_partition[k] for k, vs in sent.items() for v in vs)
    # ... and with 12 keys over 3 partitions more than one partition is used.
    assert len(set(key_partition.values())) > 1

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records = await _consume(consumer, total)
        assert len(records) == total
        received: dict[bytes, list[bytes]] = defaultdict(list)
        for rec in records:
            assert rec.topic == topic
            assert (rec.partition, rec.offset) == landed[(rec.key, rec.value)]
            received[rec.key].append(rec.value)
        # Per-key order is preserved (one partition per key, ordered within a partition).
        assert received == sent

        await consumer.commit()
        positions = {
            tp: await consumer.position(tp)
            for tp in (TopicPartition(topic, p) for p in range(PARTITIONS))
        }
        assert consumer.partitions_for_topic(topic) == set(range(PARTITIONS))
    finally:
        await consumer.stop()

    per_partition = defaultdict(int)
    for partition, _ in landed.values():
        per_partition[partition] += 1
    assert {tp.partition: pos for tp, pos in positions.items()} == {
        p: per_partition[p] for p in range(PARTITIONS)
    }

    # A fresh consumer in the same group sees the committed offsets (group coordinator and
    # __consumer_offsets work) and therefore has nothing left to read.
    second = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await second.start()
    try:
        for tp, pos in positions.items():
            assert await second.committed(tp) == pos
        second.assign(list(positions))
        leftover = await second.getmany(timeout_ms=1000)
        assert not any(leftover.values())
    finally:
        await second.stop()
