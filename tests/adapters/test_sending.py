"""`send_all` and `partition_of`: records sent in batches land where aiokafka's default
partitioner would put them, each exactly once, in order per partition, and the offsets it
returns are the last ones actually written.

The partitioner tests are pure; the `send_all` tests use the session's real Kafka broker.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from itertools import zip_longest
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.adapters.sending import Output, partition_of, send_all
from tests.support.worker import read_all

# --- partition_of (pure) ---------------------------------------------------------------


def _default(key: bytes, count: int) -> int:
    partitions = list(range(count))
    result: int = DefaultPartitioner()(key, partitions, partitions)
    return result


@settings(max_examples=500, deadline=None)
@given(key=st.binary(max_size=64), count=st.integers(min_value=1, max_value=256))
def test_partition_of_matches_aiokafkas_default_partitioner(key: bytes, count: int) -> None:
    assert partition_of(key, count) == _default(key, count)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 12, 50, 64, 100])
def test_partition_of_matches_for_room_ids(count: int) -> None:
    keys = [f'["!room{i}:example.org"]'.encode() for i in range(500)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", b"\xff" * 9]  # every tail length, high bytes
    got = [partition_of(key, count) for key in keys]
    assert got == [_default(key, count) for key in keys]
    assert all(0 <= p < count for p in got)
    if count <= 12:
        assert set(got) == set(range(count))  # 500 room ids reach every partition


@pytest.mark.parametrize("count", [1, 3, 8])
def test_partition_of_without_a_key_spreads_over_all_partitions(count: int) -> None:
    got = Counter(partition_of(None, count) for _ in range(2000))
    assert set(got) == set(range(count))


# --- send_all (real broker) ------------------------------------------------------------

BATCH_BYTES = 1024


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
        described: Any = None
        for _ in range(100):  # metadata propagates asynchronously, even on one node
            described = await admin.describe_topics([topic])
            if (
                described
                and described[0]["error_code"] == 0
                and len(described[0]["partitions"]) == partitions
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"topic {topic} never became visible: {described}")
    finally:
        await admin.close()


def _outputs(topic: str, partitions: int) -> list[Output]:
    """A mix, interleaved: explicit partitions, keyed records routed by the partitioner,
    unkeyed records with no partition, a tombstone, empty values, and one record bigger than
    a whole batch. Every (key, value) is unique so each record can be told apart."""
    out: list[Output] = []
    for i in range(400):
        pad = b"." * (i % 37)
        kind = i % 5
        if kind == 0:
            out.append((topic, f"explicit-{i}".encode(), b"e%d" % i + pad, i % partitions))
        elif kind == 1:
            out.append((topic, None, b"pinned%d" % i + pad, (i // 5) % partitions))
        elif kind in (2, 3):
            key = f'["!room{i % 23}:example.org"]'.encode()
            out.append((topic, key, b"k%d" % i + pad, None))
        else:
            out.append((topic, None, b"free%d" % i + pad, None))
        if i == 150:
            big_key = b'["!big:example.org"]'
            out.append((topic, big_key, b"B" * (BATCH_BYTES * 5), None))
        if i == 151:
            out.append((topic, b'["!tomb:example.org"]', None, None))  # tombstone
        if i == 152:
            out.append((topic, b'["!empty:example.org"]', b"", 0))
    return out


def _identity(key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None]:
    return (key, value)


async def _send_and_check(
    bootstrap: str, producer: AIOKafkaProducer, topics: dict[str, int]
) -> None:
    # Interleave the topics, so the records of one topic are not contiguous in the input.
    per_topic = [_outputs(topic, count) for topic, count in topics.items()]
    outputs = [o for row in zip_longest(*per_topic) for o in row if o is not None]

    last = await send_all(producer, outputs)

    expected_tps: set[tuple[str, int]] = set()
    for topic, count in topics.items():
        sent = [(k, v, p) for t, k, v, p in outputs if t == topic]
        records = await read_all(bootstrap, topic, len(sent))
        read = [_identity(m.key, m.value) for m in records]

        # Exactly once.
        assert len(read) == len(sent), f"{topic}: read {len(read)} records, sent {len(sent)}"
        assert Counter(read) == Counter((k, v) for k, v, _ in sent)

        by_partition: dict[int, list[Any]] = defaultdict(list)
        for m in records:
            by_partition[m.partition].append(m)
        landed = {_identity(m.key, m.value): m.partition for m in records}

        for key, value, partition in sent:
            where = landed[(key, value)]
            if partition is not None:
                assert where == partition, f"{key!r} asked for {partition}, landed on {where}"
            elif key is not None:
                assert where == partition_of(key, count), f"{key!r} on {where}"

        order = {(k, v): n for n, (k, v, _) in enumerate(sent)}
        for partition, msgs in by_partition.items():
            # Per partition: the send order, at consecutive offsets from 0 (a fresh topic,
            # no transactions, so no gaps and nothing twice).
            positions = [order[_identity(m.key, m.value)] for m in msgs]
            assert positions == sorted(positions), f"{topic}[{partition}] out of order"
            assert [m.offset for m in msgs] == list(range(len(msgs)))
            # The offsets send_all reports are the last ones actually written.
            assert last[(topic, partition)] == msgs[-1].offset
            expected_tps.add((topic, partition))

        # Enough records that every partition gets several batches (at least three).
        assert set(by_partition) == set(range(count))
        for partition, msgs in by_partition.items():
            size = sum(len(m.key or b"") + len(m.value or b"") for m in msgs)
            assert size > 2 * BATCH_BYTES, f"{topic}[{partition}] fits too few batches"

    assert set(last) == expected_tps


def small_batch_producer(bootstrap: str) -> AIOKafkaProducer:
    """Idempotent, acks=all, batches of BATCH_BYTES: every partition gets several batches."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_batch_size=BATCH_BYTES,
    )


@pytest.mark.broker
async def test_send_all_delivers_every_record_once_in_order_where_the_partitioner_would(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}-out"
    await _create_topic(kafka_bootstrap, topic, 3)

    producer = small_batch_producer(kafka_bootstrap)
    await producer.start()
    try:
        await _send_and_check(kafka_bootstrap, producer, {topic: 3})
    finally:
        await producer.stop()


@pytest.mark.broker
async def test_send_all_routes_keys_by_each_topics_own_partition_count(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Two topics with different partition counts in one call: keys are routed with each
    topic's own count, and the offsets are reported per (topic, partition)."""
    three, two = f"{unique_name}-three", f"{unique_name}-two"
    await _create_topic(kafka_bootstrap, three, 3)
    await _create_topic(kafka_bootstrap, two, 2)

    producer = small_batch_producer(kafka_bootstrap)
    await producer.start()
    try:
        await _send_and_check(kafka_bootstrap, producer, {three: 3, two: 2})
    finally:
        await producer.stop()


@pytest.mark.broker
async def test_send_all_of_nothing_sends_nothing(kafka_bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        assert await send_all(producer, []) == {}
    finally:
        await producer.stop()


@pytest.mark.broker
async def test_send_all_twice_continues_the_offsets(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-again"
    await _create_topic(kafka_bootstrap, topic, 3)
    producer = small_batch_producer(kafka_bootstrap)
    await producer.start()
    try:
        first = await send_all(producer, [(topic, None, b"x%d" % i, 1) for i in range(50)])
        second = await send_all(producer, [(topic, None, b"y%d" % i, 1) for i in range(30)])
    finally:
        await producer.stop()

    assert first == {(topic, 1): 49}
    assert second == {(topic, 1): 79}
    records = await read_all(kafka_bootstrap, topic, 80)
    assert [m.value for m in records] == [b"x%d" % i for i in range(50)] + [
        b"y%d" % i for i in range(30)
    ]
