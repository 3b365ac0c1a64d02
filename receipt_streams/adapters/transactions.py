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

from receipt_streams.adapters.isolation import NotTheRecords
from receipt_streams.adapters.sending import Output, send_all
from receipt_streams.config import Settings

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, int]  # next offset to consume, per input partition
Written = dict[tuple[str, int], int]  # last offset written, per output (topic, partition)


class Fenced(NotTheRecords):
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
        # A batch of several records within what the broker takes (its default
        # message.max.bytes is just over 1 MiB); a larger record goes out alone.
        max_batch_size=min(1000 * 1000, s.producer_max_request_bytes),
        max_request_size=s.producer_max_request_bytes,
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
    """Publishes the batches of one partition task, in order, by a producer of its own.

    After a batch the broker refused, call `reset` before the next: the refused records
    took sequence numbers the broker never saw, so the idempotent producer's next batch on
    that partition would be refused too (OutOfOrderSequenceNumber)."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.producer = self._new_producer()

    @abstractmethod
    def _new_producer(self) -> AIOKafkaProducer: ...

    async def start(self) -> None:
        await self.producer.start()

    @abstractmethod
    async def publish(
        self, steps: Sequence[Sequence[Output]], offsets: Offsets, apart: bool = False
    ) -> Written:
        """Make `steps` (each acknowledged before the next is sent) and the input `offsets`
        durable. Raises `Fenced` when the partition has another owner. In one transaction
        the steps go out together, unless `apart` (then in separate produce batches: parts
        that the broker took one by one, but might refuse packed together)."""

    @abstractmethod
    async def probe(self, outputs: Sequence[Output]) -> None:
        """Raise what sending `outputs` raises, without making them visible where that can
        be helped (a transaction, aborted); `reset` after a failure."""

    async def reset(self) -> None:
        """A fresh producer (same transactional id: a new epoch, sequences from zero)."""
        await self.stop()
        self.producer = self._new_producer()
        await self.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.producer.stop()


class TransactionalSink(PartitionSink):
    def __init__(self, s: Settings, transactional_id: str, group_id: str) -> None:
        self.group_id = group_id
        self.transactional_id = transactional_id
        super().__init__(s)

    def _new_producer(self) -> AIOKafkaProducer:
        return producer(
            self.s,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=int(max(10.0, 3 * self.s.session_timeout_s) * 1000),
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

    async def publish(
        self, steps: Sequence[Sequence[Output]], offsets: Offsets, apart: bool = False
    ) -> Written:
        p = self.producer
        try:
            await p.begin_transaction()
            # One transaction: its records become visible together, so no step waits; and
            # its offsets go to the group while the records are being written (a broker round
            # trip or two fewer per batch). aiokafka ends a transaction without waiting for its
            # records, so the commit waits for their acks.
            if apart:
                sending = asyncio.ensure_future(self._send_steps(steps))
            else:
                sending = asyncio.ensure_future(
                    send_all(p, [record for step in steps for record in step])
                )
            adding = asyncio.ensure_future(self._add_offsets(offsets))
            both = (sending, adding)
            try:
                await asyncio.wait(both, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for step in both:
                    step.cancel()  # after a failure, or when this publish is cancelled
                await asyncio.gather(*both, return_exceptions=True)
            for step in both:  # the records' own failure first: it may be theirs
                if not step.cancelled() and step.exception() is not None:
                    raise step.exception()  # type: ignore[misc]
            if sending.cancelled() or adding.cancelled():
                raise asyncio.CancelledError
            await p.commit_transaction()
            return sending.result()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise Fenced(f"{self.transactional_id} was fenced by a newer owner") from exc
        except BaseException:
            await self._abort()
            raise

    async def _send_steps(self, steps: Sequence[Sequence[Output]]) -> Written:
        written: Written = {}
        for step in steps:
            written.update(await send_all(self.producer, step))
        return written

    async def _add_offsets(self, offsets: Offsets) -> None:
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, self.group_id)

    async def probe(self, outputs: Sequence[Output]) -> None:
        p = self.producer
        try:
            await p.begin_transaction()
            await send_all(p, outputs)
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise Fenced(f"{self.transactional_id} was fenced by a newer owner") from exc
        finally:
            await self._abort()

    async def _abort(self) -> None:
        p = self.producer
        with contextlib.suppress(Exception):
            if p._txn_manager.is_in_transaction():
                await asyncio.wait_for(p.abort_transaction(), 10)


class AtLeastOnceSink(PartitionSink):
    """Send each step and wait for its acks, then commit the offsets with the consumer."""

    def __init__(self, s: Settings, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        super().__init__(s)

    def _new_producer(self) -> AIOKafkaProducer:
        return producer(self.s)

    async def publish(
        self, steps: Sequence[Sequence[Output]], offsets: Offsets, apart: bool = False
    ) -> Written:
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

    async def probe(self, outputs: Sequence[Output]) -> None:
        """Without transactions a probe is a real send: at least once, so the outputs that
        went through may be sent again by the publish that follows."""
        await send_all(self.producer, outputs)


def sink_for(
    s: Settings, transactional_id: str, group_id: str, consumer: AIOKafkaConsumer
) -> PartitionSink:
    """The sink of one partition task under the configured processing guarantee."""
    if s.processing_guarantee == "exactly_once":
        return TransactionalSink(s, transactional_id, group_id)
    return AtLeastOnceSink(s, consumer)


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
