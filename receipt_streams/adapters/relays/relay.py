"""Relays: a consumer group on an internal log, batched into outputs, committed after acks.

Sync deltas are relayed from the receipts changelog, federation EDUs from the outbox topic.
Both logs are written by the fold as part of accepting a change, so relaying them is
at-least-once end to end: a relay that dies re-reads from its last commit, and what it sends
is idempotent to apply.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from receipt_streams.adapters import metrics
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.sending import send_all
from receipt_streams.adapters.supervise import supervise
from receipt_streams.config import Settings
from receipt_streams.core.deltas import plan_deltas
from receipt_streams.core.federation import OutboundQueue

log = logging.getLogger(__name__)

Output = tuple[str, bytes, bytes]  # topic, key, value


class Relay(ABC):
    name = "relay"

    def __init__(self, settings: Settings, source_topic: str, window_ms: int) -> None:
        self.s = settings
        self.source_topic = source_topic
        self.window = window_ms / 1000

    @abstractmethod
    def absorb(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        """Take in consumed records (in offset order, per partition)."""

    @abstractmethod
    def drain(self, now: int) -> list[Output]:
        """The outputs due now."""

    @abstractmethod
    def positions(self) -> dict[TopicPartition, int]:
        """Offsets safe to commit once `drain`'s outputs are acknowledged."""

    def idle_poll_ms(self) -> int:
        return 500

    async def run_forever(self) -> None:
        await supervise(self.name, self.run)

    async def run(self) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(
            self.source_topic,
            bootstrap_servers=s.bootstrap_servers,
            group_id=f"{s.app_id}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5000,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 250),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.producer_linger_ms,
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                while True:
                    await self._collect(consumer)
                    await self._send(producer, self.drain(now_ms()))
                    await self._commit(consumer)
                    await metrics.record_lag(self.name, consumer)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _collect(self, consumer: AIOKafkaConsumer) -> None:
        got = await consumer.getmany(timeout_ms=self.idle_poll_ms())
        if not got:
            return
        deadline = time.monotonic() + self.window
        while True:
            for tp, msgs in got.items():
                self.absorb(tp, msgs)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            got = await consumer.getmany(timeout_ms=max(1, int(left * 1000)))

    async def _send(self, producer: AIOKafkaProducer, outputs: list[Output]) -> None:
        await send_all(producer, ((topic, key, value, None) for topic, key, value in outputs))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        positions = self.positions()
        if not positions:
            return
        try:
            await consumer.commit(positions)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: their new owner re-sends from the last commit.
            log.warning("%s offsets not committed", self.name, extra={"error": repr(exc)})


class DeltaRelay(Relay):
    """Receipts changelog -> one sync delta per room per window (`seq` = changelog offset)."""

    name = "sync-deltas"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.changelog_receipts, settings.batch_window_ms)
        self.batch: dict[TopicPartition, list[Any]] = {}

    def absorb(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        self.batch.setdefault(tp, []).extend(records)

    def drain(self, now: int) -> list[Output]:
        outputs = []
        for msgs in self.batch.values():
            metrics.DELTA_BATCH.observe(len(msgs))
            for delta in plan_deltas(((m.offset, m.key, m.value) for m in msgs), now):
                outputs.append((self.s.topic_sync, delta["room_id"].encode(), orjson.dumps(delta)))
        metrics.DELTAS.inc(len(outputs))
        return outputs

    def positions(self) -> dict[TopicPartition, int]:
        done = {tp: msgs[-1].offset + 1 for tp, msgs in self.batch.items()}
        self.batch = {}
        return done


class EduRelay(Relay):
    """Outbox -> `m.receipt` EDUs per destination, coalesced, big rooms paced."""

    name = "federation-edus"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.topic_outbox, settings.edu_window_ms)
        self.queue = OutboundQueue(
            settings.server_name, settings.large_room_servers, settings.large_room_interval_ms
        )
        self.consumed: dict[TopicPartition, int] = {}

    def absorb(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        for m in records:
            try:
                self.queue.add(orjson.loads(m.value), (tp, m.offset))
            except (ValueError, KeyError, TypeError):
                log.exception("unreadable outbox record", extra={"offset": m.offset})
        if records:
            self.consumed[tp] = records[-1].offset + 1

    def drain(self, now: int) -> list[Output]:
        edus = self.queue.flush(now)
        metrics.EDUS.inc(len(edus))
        return [(self.s.topic_edus, e["destination"].encode(), orjson.dumps(e)) for e in edus]

    def positions(self) -> dict[TopicPartition, int]:
        """Up to the oldest record with an entry still pending (paced), per partition."""
        held: dict[TopicPartition, int] = {}
        for tp, offset in self.queue.pending_sources():
            held[tp] = min(offset, held.get(tp, offset))
        return {tp: held.get(tp, end) for tp, end in self.consumed.items()}

    def idle_poll_ms(self) -> int:
        return self.s.large_room_interval_ms if self.queue.pending else 500
