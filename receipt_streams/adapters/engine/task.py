"""One partition of the fold (Kafka Streams' StreamTask): its stores, the overlays a batch is
folded through, its processor and router, and the sink its batches are published by.

A task's state is its stores plus the sealed batches not yet in them. The stores are written
only once a batch is committed (`settle`), with the changelog offsets it reached, so a store
is always a prefix of its changelog. A task whose batch failed is dropped whole, or rolled
back to its stores (`rollback`) while the batch is split to find the record at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import TopicPartition

from receipt_streams.adapters.effects import Output, Router, Tally
from receipt_streams.adapters.engine.stores import Overlay, RocksMemory, RocksStore, TableStore
from receipt_streams.adapters.transactions import Offsets, PartitionSink, Written
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.processor import Limits, Processor

TABLES = ("receipts", "room_state", "held")
Backend = Callable[[str, int], TableStore]  # (table, partition) -> its store


def rocks_backend(root: Path, s: Settings) -> Backend:
    # The held table holds only receipts waiting out their grace period: its keys fit in
    # memory, and every join and event asks it for a key it almost never has.
    memory = RocksMemory(s.rocksdb_memory_bytes, s.rocksdb_write_buffer_bytes)  # all stores'
    return lambda table, partition: RocksStore(
        root / f"{table}-{partition}",
        index_keys=table == "held",
        cache_bytes=s.store_cache_bytes,
        memory=memory,
    )


def changelogs(s: Settings) -> dict[str, str]:
    return {
        "receipts": s.changelog_receipts,
        "room_state": s.changelog_state,
        "held": s.changelog_held,
    }


class TaskBatch(NamedTuple):
    """What one batch did to one task, sealed: outputs, table writes and input offsets, and
    the input records folded (kept until durable: a failed batch is split to find the one
    at fault)."""

    outputs: list[Output]
    writes: dict[str, dict[bytes, bytes | None]]  # table -> key -> value (None: delete)
    offsets: Offsets
    records: list[Any]


class PartitionTask:
    def __init__(
        self,
        number: int,
        backend: Backend,
        limits: Limits,
        s: Settings,
        sink: PartitionSink,
    ) -> None:
        self.number = number
        self.backend = backend
        self.limits, self.settings = limits, s
        self.changelogs = changelogs(s)
        self.stores = {table: backend(table, number) for table in TABLES}
        self.views = {name: Overlay(store) for name, store in self.stores.items()}
        self._new_processor()
        self.sink = sink
        self.outputs: list[Output] = []
        self.offsets: Offsets = {}
        self.records: list[Any] = []

    def _new_processor(self) -> None:
        self.processor = Processor(
            self.views["receipts"], self.views["room_state"], self.views["held"], self.limits
        )
        self.router = Router(self.processor, self.settings)

    def fold(self, records: Sequence[Any], now: int, tally: Tally) -> None:
        """Run records through the core, in order; their outputs and offsets join the batch
        in progress, their table writes stay in the overlays."""
        router, held, outputs, kept = self.router, self.processor.held, self.outputs, self.records
        reached: dict[tuple[str, int], int] = {}
        for record in records:
            kept.append(record)
            tally.input(record.topic)
            src = Source.of(record)
            effects = router.handle(src, now)
            source = router.source_of(record.topic)
            for removal in router.carry_out(effects, source, outputs, tally, src):
                # In the overlay at once, so the rest of the batch sees it; on the changelog
                # with (or, at least once, after) what the held records became.
                held.remove(removal.key, removal.records)
            reached[(record.topic, record.partition)] = record.offset + 1
        for (topic, partition), offset in reached.items():
            self.offsets[TopicPartition(topic, partition)] = offset

    def seal(self) -> TaskBatch | None:
        """Hand the batch in progress over to be made durable; its writes stay visible
        in the overlays until `settle`. None when the batch did nothing here."""
        if not self.offsets and not self.outputs:
            return None
        writes = {table: view.seal() for table, view in self.views.items()}
        batch = TaskBatch(self.outputs, writes, self.offsets, self.records)
        self.outputs, self.offsets, self.records = [], {}, []
        return batch

    def rollback(self) -> None:
        """Forget every batch not in the stores (sealed or in progress): the task is back to
        what is committed. The processor starts afresh too (it counts held bytes)."""
        for view in self.views.values():
            view.discard()
        self.outputs, self.offsets, self.records = [], {}, []
        self._new_processor()

    def changelog_records(self, batch: TaskBatch) -> tuple[list[Output], list[Output]]:
        """The batch's table writes as changelog records: receipts and room state, then
        held receipts."""
        first: list[Output] = []
        held: list[Output] = []
        for table, writes in batch.writes.items():
            out = held if table == "held" else first
            topic = self.changelogs[table]
            out.extend((topic, k, v, self.number) for k, v in writes.items())
        return first, held

    def settle(self, batch: TaskBatch, written: Written) -> None:
        """The batch is committed: write it to the stores with the changelog offsets it
        reached, and stop holding it in the overlays."""
        for table, writes in batch.writes.items():
            offset = written.get((self.changelogs[table], self.number))
            self.stores[table].apply(writes, offset)
            self.views[table].settle(writes)

    def recreate(self, table: str) -> None:
        """Start `table` over from an empty store (it outlived its changelog)."""
        store = self.stores[table]
        store.close()
        if isinstance(store, RocksStore):
            RocksStore.destroy(store.path)
        self.stores[table] = self.backend(table, self.number)
        self.views[table].store = self.stores[table]

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
