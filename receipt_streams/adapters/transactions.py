"""Where a partition task's batch becomes visible to the rest of the system.

With `exactly_once`, a batch's outputs, changelog writes and input offsets go out in one
Kafka transaction per partition task, on a producer whose `transactional.id` names the task
(`<group>-<partition>`), as Kafka Streams did before KIP-447: aiokafka's
`send_offsets_to_transaction` takes no consumer generation, so fencing comes from the id.
Starting a task's producer fences every earlier producer of that id (its open transaction is
aborted, its later sends refused), so a worker that was paused past its session can publish
nothing more for a partition that moved. Readers use `isolation_level="read_committed"`.

With `at_least_once` (the engine's older behaviour, kept for comparison) a batch is sent,
acknowledged, then its offsets committed: nothing is lost, but a paused worker can still
publish a stale batch before it learns that its partitions moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)
from aiokafka.producer import sender as aiokafka_sender

from receipt_streams.adapters.sending import Output, send_all
from receipt_streams.config import Settings

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, int]  # next offset to consume, per input partition
Written = dict[tuple[str, int], int]  # last offset written, per output (topic, partition)


class Fenced(Exception):
    """Another worker took this partition over: this one may write nothing more for it."""


def tune_transaction_retry(s: Settings) -> None:
    """A transaction begun right after the last one's commit finds the coordinator still
    writing its markers: the first AddPartitionsToTxn is refused (CONCURRENT_TRANSACTIONS,
    KAFKA-5477) and aiokafka retries it after a fixed 20 ms (`BACKOFF_OVERRIDE`, no option).
    A partition task begins its next transaction at once, so every batch paid those 20 ms:
    back to back, a transaction took 24 ms instead of 7. aiokafka is pinned to <0.15, and a
    test checks that the constant is still there."""
    aiokafka_sender.BACKOFF_OVERRIDE = s.txn_retry_backoff_ms / 1000


def producer(s: Settings, **extra: Any) -> AIOKafkaProducer:
    tune_transaction_retry(s)
    return AIOKafkaProducer(
        bootstrap_servers=s.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=s.producer_linger_ms,
        max_batch_size=1000 * 1000,  # under the broker's default message.max.bytes
        **extra,
    )


def read_committed(s: Settings, **extra: Any) -> AIOKafkaConsumer:
    """A consumer of what the fold and relays write: only committed transactions."""
    return AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **extra,
    )


class PartitionSink(ABC):
    """Publishes the batches of one partition task, in order."""

    async def start(self) -> None:
        return None

    @abstractmethod
    async def publish(self, steps: Sequence[Sequence[Output]], offsets: Offsets) -> Written:
        """Make `steps` (each acknowledged before the next is sent) and the input `offsets`
        durable. Raises `Fenced` when the partition has another owner."""

    async def stop(self) -> None:
        return None


class TransactionalSink(PartitionSink):
    def __init__(self, s: Settings, transactional_id: str, group_id: str) -> None:
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.producer = producer(
            s,
            transactional_id=transactional_id,
            transaction_timeout_ms=int(max(10.0, 3 * s.session_timeout_s) * 1000),
        )

    async def start(self) -> None:
        """Start the producer and wait for its id: from here on, earlier owners are fenced
        (their open transaction aborted). Call before reading the partition's committed
        offsets or restoring its stores."""
        await self.producer.start()
        try:
            # aiokafka fetches the producer id lazily; this waits for InitProducerId.
            await self.producer._txn_manager.wait_for_pid()
        except BaseException:
            await self.stop()
            raise

    async def publish(self, steps: Sequence[Sequence[Output]], offsets: Offsets) -> Written:
        p = self.producer
        try:
            await p.begin_transaction()
            # One transaction: its records become visible together, so no step waits.
            written = await send_all(p, [record for step in steps for record in step])
            if offsets:
                await p.send_offsets_to_transaction(offsets, self.group_id)
            await p.commit_transaction()
            return written
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise Fenced(f"{self.transactional_id} was fenced by a newer owner") from exc
        except BaseException:
            with contextlib.suppress(Exception):
                if p._txn_manager.is_in_transaction():
                    await asyncio.wait_for(p.abort_transaction(), 10)
            raise

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.producer.stop()


class AtLeastOnceSink(PartitionSink):
    """Send each step and wait for its acks, then commit the offsets with the consumer."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self.producer = producer
        self.consumer = consumer

    async def publish(self, steps: Sequence[Sequence[Output]], offsets: Offsets) -> Written:
        written: Written = {}
        for step in steps:
            written.update(await send_all(self.producer, step))
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # The partition moved: its new owner replays from the last commit.
                log.warning(
                    "offsets not committed: the partition moved to another worker, which "
                    "replays from the last commit (no action needed)",
                    extra={"error": repr(exc)},
                )
        return written


def sink_for(
    s: Settings,
    transactional_id: str,
    group_id: str,
    shared: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> PartitionSink:
    """The sink of one partition task under the configured processing guarantee."""
    if s.processing_guarantee == "exactly_once":
        return TransactionalSink(s, transactional_id, group_id)
    return AtLeastOnceSink(shared, consumer)


async def fence_and_seek(
    consumer: AIOKafkaConsumer, sinks: Sequence[PartitionSink], tps: Sequence[TopicPartition]
) -> None:
    """On assignment: start the new tasks' sinks (fencing their previous owners), then
    position `tps` at their committed offsets read afresh. aiokafka fetched the committed
    offsets before the rebalance callback, so a fenced owner's last commit may be missing
    from what it fetched."""
    await asyncio.gather(*(sink.start() for sink in sinks))
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is not None:
            consumer.seek(tp, committed)
