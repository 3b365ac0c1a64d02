"""The Kafka side of the import: records to their input topics, every page acked before the
next is read, so an interrupted import can resume after the last stream_id it reported."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer

from receipt_streams.adapters.sending import send_all
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.config import Settings
from receipt_streams.migrate.synapse_rows import Record


class RecordWriter:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.topics = {
            "client": s.topic_client,
            "federation": s.topic_federation,
            "membership": s.topic_membership,
            "events": s.topic_events,
        }
        self.producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> RecordWriter:
        if self.s.create_topics:
            await ensure_topics(self.s)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.s.producer_linger_ms,
            max_batch_size=1000 * 1000,
        )
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.producer is not None
        await self.producer.stop()

    async def write(self, records: Sequence[Record]) -> None:
        """Write `records` (in order per key) and wait for every ack."""
        assert self.producer is not None
        await send_all(
            self.producer,
            ((self.topics[r.kind], r.key.encode(), orjson.dumps(r.value), None) for r in records),
        )
