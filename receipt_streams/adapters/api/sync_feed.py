"""Tails the receipts and room-state changelogs into the API's view, and wakes long-polls.

Every API process reads both changelogs whole (they are compacted): it can answer for every
room and user without routing. The view is in memory (`SyncIndex`, rebuilt from the logs at
each start, `RECEIPT_STREAMS_READ_STORE=memory`) or on disk (`DiskView`, the default
`rocksdb`, under DATA_DIR/read-view: a restart reads only what its local copy has not; a copy
ahead of the logs, a recreated topic, is rebuilt; RocksDB locks it, one process per data dir).
Each fetched batch is applied, then committed, then long-polls are woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.api.read_store import DiskView
from receipt_streams.adapters.engine.stores import RocksMemory
from receipt_streams.adapters.supervise import supervise
from receipt_streams.config import Settings
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.sync_view import SyncIndex, Token

log = logging.getLogger(__name__)


class SyncFeed:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.index: SyncIndex | DiskView = self._new_index()
        self.changed = asyncio.Condition()
        self.caught_up = asyncio.Event()

    def _new_index(self) -> SyncIndex:
        s = self.s
        return SyncIndex(s.partitions, s.partitions, s.sliding_sync_timeline_events)

    def open(self) -> None:
        """Open the on-disk view (`read_store` rocksdb; the in-memory one needs nothing).
        The commands call it before serving, so that a data dir another process holds stops
        the start with `StoreInUse`; a process that never runs the feed (relays, a worker
        not serving the API) opens none. Idempotent."""
        if self.s.read_store == "rocksdb" and not isinstance(self.index, DiskView):
            self.index = self._open_disk()

    def close(self) -> None:
        """Close the on-disk view once nothing reads it (after the feed and the HTTP server
        stopped). Without this the view lives until the interpreter exits, and RocksDB's
        background work may still run while the process tears down."""
        if isinstance(self.index, DiskView) and not self.index.closed:
            self.index.close()
            token = self.index.token()
            log.info(
                "read store closed",
                extra={"receipts": sum(token.receipts), "state": sum(token.members)},
            )

    def _open_disk(self) -> DiskView:
        s = self.s
        return DiskView(
            s.data_dir / "read-view",
            s.partitions,
            s.partitions,
            s.sliding_sync_timeline_events,
            RocksMemory(s.read_store_memory_bytes, min(4 * 2**20, s.read_store_memory_bytes // 8)),
            identity={
                "app_id": s.app_id,
                "receipts": s.changelog_receipts,
                "state": s.changelog_state,
            },
            max_age_s=s.read_store_max_age_s,
            answers_receipts=s.read_store_answers_receipts,
        )

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
        """After a failure: the in-memory index is rebuilt from the start (it must never mix
        two reads of the logs); the disk view drops its batch in progress and goes on from
        what it committed."""
        if isinstance(self.index, DiskView):
            self.index.rollback()
        else:
            self.index = self._new_index()
        self.caught_up.clear()

    async def run(self) -> None:
        s = self.s
        self.open()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",  # only what the fold committed
            auto_offset_reset="earliest",
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
            targets = await consumer.end_offsets(tps)
            await self._seek(consumer, tps, targets)
            while True:
                got = await consumer.getmany(timeout_ms=500)
                for tp, msgs in got.items():
                    for m in msgs:
                        self._apply(tp, m)
                self.index.commit()  # the disk view's batch, with the offsets it reaches
                if isinstance(self.index, DiskView):
                    metrics.READ_STORE_BACKGROUND.set(self.index.background_jobs())
                if got:
                    async with self.changed:
                        self.changed.notify_all()
                await metrics.record_lag("sync-view", consumer)
                if not self.caught_up.is_set() and await self._reached(consumer, targets):
                    self.caught_up.set()
                    log.info("sync feed caught up")
        finally:
            await consumer.stop()

    def _start(self, tp: TopicPartition) -> int:
        token = self.index.token()
        nexts = token.receipts if tp.topic == self.s.changelog_receipts else token.members
        return nexts[tp.partition]

    async def _seek(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        targets: dict[TopicPartition, int],
    ) -> None:
        """From where the view got to: the beginning for an empty view; a local copy ahead
        of its changelog (the topic was recreated) is wiped and read again."""
        if isinstance(self.index, DiskView) and any(self._start(tp) > targets[tp] for tp in tps):
            log.warning("read store is ahead of its changelogs: rebuilding")
            self.index.wipe()
        have, end = sum(map(self._start, tps)), sum(targets.values())
        log.info(
            "sync feed starting: %d of %d changelog offsets in the local view",
            have,
            end,
            extra={"local": have, "end": end, "store": self.s.read_store},
        )
        for tp in tps:
            start = self._start(tp)
            if start:
                consumer.seek(tp, start)
            else:
                await consumer.seek_to_beginning(tp)

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
