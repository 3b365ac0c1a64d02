"""Sync deltas from the receipts table's changelog.

The changelog is the durable log of accepted changes, so deltas are derived from it rather
than sent beside the table write: a change is in a delta exactly when it is in the table, even
if the worker that made it dies at any moment. A plain consumer group reads it, batches per
window, sends one delta per room, waits for the acks, then commits (at-least-once: after a
fault a delta may come again, which consumers apply idempotently).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from receipt_streams.adapters import metrics
from receipt_streams.config import Settings
from receipt_streams.core.deltas import plan_deltas

log = logging.getLogger(__name__)


class DeltaEmitter:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.window = settings.batch_window_ms / 1000

    async def run_forever(self) -> None:
        """Run, restarting after broker errors; returns only when cancelled."""
        while True:
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delta emitter failed; restarting in 1 s")
                await asyncio.sleep(1)

    async def run(self) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(
            s.changelog_receipts, bootstrap_servers=s.bootstrap_servers,
            group_id=f"{s.app_id}-sync-deltas", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=5000,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 250))
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all",
                                    enable_idempotence=True, linger_ms=s.producer_linger_ms)
        await producer.start()
        try:
            await consumer.start()
            try:
                while True:
                    batch = await self._collect(consumer)
                    if batch:
                        await self._emit(consumer, producer, batch)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _collect(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list]:
        batch: dict[TopicPartition, list] = defaultdict(list)
        for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
            batch[tp].extend(msgs)
        if not batch:
            return {}
        deadline = time.monotonic() + self.window
        while (left := deadline - time.monotonic()) > 0:
            for tp, msgs in (await consumer.getmany(timeout_ms=max(1, int(left * 1000)))).items():
                batch[tp].extend(msgs)
        return batch

    async def _emit(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                    batch: dict[TopicPartition, list]) -> None:
        now = int(time.time() * 1000)
        acks = []
        for msgs in batch.values():
            metrics.DELTA_BATCH.observe(len(msgs))
            for delta in plan_deltas(((m.offset, m.key, m.value) for m in msgs), now):
                acks.append(await producer.send(self.s.topic_sync, orjson.dumps(delta),
                                                key=delta["room_id"].encode()))
        await asyncio.gather(*acks)
        metrics.DELTAS.inc(len(acks))
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: their new owner re-sends from the last commit.
            log.warning("delta offsets not committed", extra={"error": repr(exc)})
