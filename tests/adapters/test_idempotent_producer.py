"""`IdempotentProducer` on the real broker: a batch sent again with its numbers (its answer
lost, as when the broker is killed between appending it and answering) is appended once, where
a plain producer appends it twice; and a batch the broker refuses leaves the partition open
for the next one (aiokafka alone then refuses every later batch as out of order)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber

from receipt_streams.adapters.faust_engine.app import create_app
from receipt_streams.adapters.idempotent_producer import IdempotentProducer
from tests.support.worker import read_all, worker_settings

MAX_BYTES = 4096


async def _topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(MAX_BYTES)}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()


async def _send_twice(producer: AIOKafkaProducer, topic: str) -> None:
    """Send a batch of two, then the same batch again with the same numbers: what the
    producer does when the broker's answer to the first was lost."""
    tp = TopicPartition(topic, 0)
    txn: Any = producer._txn_manager
    before = txn.sequence_number(tp) if txn else 0
    for _ in range(2):
        if txn:
            txn._sequence_numbers[tp] = before
        batch = producer.create_batch()
        for value in (b"older", b"newer"):
            batch.append(key=b"k", value=value, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))


@pytest.mark.broker
@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_batch_sent_again_is_appended_once(
    kafka_bootstrap: str, unique_name: str, idempotent: bool
) -> None:
    topic = f"{unique_name}-again"
    await _topic(kafka_bootstrap, topic)
    kind = IdempotentProducer if idempotent else AIOKafkaProducer
    producer = kind(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await _send_twice(producer, topic)
    finally:
        await producer.stop()
    once = [b"older", b"newer"]
    # The plain producer is the case this producer exists for: the key steps back.
    values = [r.value for r in await read_all(kafka_bootstrap, topic, 2)]
    assert values == (once if idempotent else once * 2)


@pytest.mark.broker
async def test_a_refused_batch_leaves_the_partition_open(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}-refused"
    await _topic(kafka_bootstrap, topic)
    producer = IdempotentProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    await plain.start()
    try:
        for round_ in range(2):
            with pytest.raises(MessageSizeTooLargeError):
                await producer.send_and_wait(topic, b"x" * MAX_BYTES * 2, partition=0)
            sent = [
                await producer.send(topic, b"%d-%d" % (round_, i), partition=0) for i in range(3)
            ]
            await asyncio.wait_for(asyncio.gather(*sent), 30)
        # aiokafka's own idempotent producer, for contrast: once the broker knows its numbers,
        # a refused batch shuts the partition.
        await plain.send_and_wait(topic, b"open", partition=0)
        with pytest.raises(MessageSizeTooLargeError):
            await plain.send_and_wait(topic, b"x" * MAX_BYTES * 2, partition=0)
        with pytest.raises(OutOfOrderSequenceNumber):
            await asyncio.wait_for(plain.send_and_wait(topic, b"shut", partition=0), 30)
    finally:
        await producer.stop()
        await plain.stop()
    want = [b"%d-%d" % (r, i) for r in range(2) for i in range(3)] + [b"open"]
    assert [r.value for r in await read_all(kafka_bootstrap, topic, len(want))] == want


async def test_the_faust_engine_writes_with_an_idempotent_producer(tmp_path: Any) -> None:
    app = create_app(worker_settings("127.0.0.1:9", tmp_path, engine="faust"))
    producer = app.producer._new_producer()
    assert isinstance(producer, IdempotentProducer) and producer._txn_manager is not None
