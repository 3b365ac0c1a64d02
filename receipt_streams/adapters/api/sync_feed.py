"""Tails the receipts and room-state changelogs into a SyncIndex, and wakes long-polls.

Every API process reads both changelogs whole (they are compacted): it can answer for every
room and user without routing, and restarts rebuild the same index from the same logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.supervise import supervise
from receipt_streams.config import Settings
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.sync_view import SyncIndex, Token

log = logging.getLogger(__name__)


class SyncFeed:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.index = self._new_index()
        self.changed = asyncio.Condition()
        self.caught_up = asyncio.Event()

    def _new_index(self) -> SyncIndex:
        s = self.s
        return SyncIndex(s.partitions, s.partitions, s.sliding_sync_timeline_events)

    async def wait_for_change(self, timeout_s: float) -> None:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)

    async def wait_until(self, token: Token, deadline: float) -> bool:
        """Read-after-write: wait (until the monotonic `deadline`) for this process to have
        read everything `token` covers, since another process may have handed it out. False
        when the deadline passed first: the caller must not answer from a view behind it."""
        while not self.index.token().reached(token):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.wait_for_change(left)
        return True

    async def run_forever(self) -> None:
        await supervise("sync feed", self.run, on_failure=self._reset)

    def _reset(self) -> None:
        """Rebuild from the start: the index must never mix two reads of the logs."""
        self.index = self._new_index()
        self.caught_up.clear()

    async def run(self) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",  # only what the fold committed
            max_poll_records=10_000,
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(t, p)
                for t in (s.changelog_receipts, s.changelog_state)
                for p in range(s.partitions)
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            targets = await consumer.end_offsets(tps)
            while True:
                got = await consumer.getmany(timeout_ms=500)
                for tp, msgs in got.items():
                    for m in msgs:
                        self._apply(tp, m)
                if got:
                    async with self.changed:
                        self.changed.notify_all()
                await metrics.record_lag("sync-view", consumer)
                if not self.caught_up.is_set() and await self._reached(consumer, targets):
                    self.caught_up.set()
                    log.info("sync feed caught up")
        finally:
            await consumer.stop()

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
        """Has every partition been read up to where it ended when the feed started?"""
        for tp, end in targets.items():
            if await consumer.position(tp) < end:
                return False
        return True

    def _apply(self, tp: TopicPartition, m: object) -> None:
        key, value, offset = m.key, m.value, m.offset  # type: ignore[attr-defined]
        if tp.topic == self.s.changelog_receipts:
            self.index.apply_receipt(
                tp.partition,
                offset,
                ReceiptKey.decode(key),
                Receipt.decode(value) if value is not None else None,
            )
            return
        parts = orjson.loads(key)
        if parts[0] == "m":
            membership = orjson.loads(value)["membership"] if value is not None else None
            self.index.apply_membership(tp.partition, offset, parts[1], parts[2], membership)
        elif parts[0] == "e" and value is not None:
            stream_pos = orjson.loads(value).get("stream_pos")
            if isinstance(stream_pos, int):
                self.index.apply_event(tp.partition, offset, parts[1], parts[2], stream_pos)
            else:
                self.index.skip_member_offset(tp.partition, offset)
        else:
            self.index.skip_member_offset(tp.partition, offset)
