"""The batch fold: consume a batch, fold it through the core, make it durable, commit.

Faust hands an agent one event at a time, and a no-op agent already tops out near a fifth of
what plain aiokafka moves on the same broker (README, Performance). This engine keeps the
same topics, tables and changelogs, but works a batch at a time, as Kafka Streams does:

1. `getmany` a batch; per partition, merge its topics by timestamp (each topic partition
   keeps its order) and run every record through the partition's `Processor`, whose stores
   are `Overlay`s of the partition's local stores;
2. send the outputs (DLQ, outbox, inbound entries) and the receipts and room-state changelog
   writes of the batch, coalesced per key, and wait for every ack;
3. only then send the held-receipts changelog writes: a held receipt is forgotten only once
   what it became is durable, and wait for those acks;
4. write the batch to the local stores (RocksDB), with the changelog offsets reached, in one
   atomic write per store, then commit the input offsets.

Steps 2-4 run in a task of their own while the next batch is folded on top of the one in
flight (its writes stay visible in the overlays, sealed, until the stores hold them): the
fold is CPU and the acks are the broker's time, so the two overlap. Batches become durable
in order, at most one in flight; a batch that fails stops those after it, and the run
restarts from the last commit.

A crash anywhere replays the batch from the last commit against a store that is a prefix of
its changelog (restored to the changelog's end first), which the core's fold makes idempotent
(`REPLAYED` re-sends the outbox record). Partitions are assigned with the range assignor, so
partition `p` of every room-keyed topic lands on the same worker as its stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError

from receipt_streams.adapters import metrics
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.effects import Tally, guarded, limits_of
from receipt_streams.adapters.engine.ordering import InputBuffers
from receipt_streams.adapters.engine.stores import Overlay, RocksMemory, RocksStore, TableStore
from receipt_streams.adapters.sending import Output, send_all
from receipt_streams.adapters.supervise import supervise
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.processor import (
    FEDERATION_IN,
    FEDERATION_OUT,
    Effect,
    Emit,
    HeldRemoval,
    Limits,
    Processor,
    SendDlq,
)

log = logging.getLogger(__name__)

TABLES = ("receipts", "room_state", "held")
_YIELD_EVERY = 250  # records folded between two turns of the event loop
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


Handler = Callable[[Source, int], list[Effect]]


class Partition:
    """One partition's stores, the overlays a batch goes through, its processor, and the
    processor's handler for each input topic."""

    def __init__(
        self, number: int, stores: dict[str, TableStore], limits: Limits, s: Settings
    ) -> None:
        self.number = number
        self.stores = stores
        self.views = {name: Overlay(store) for name, store in stores.items()}
        processor = self.processor = Processor(
            self.views["receipts"], self.views["room_state"], self.views["held"], limits
        )
        self.handlers: dict[str, Handler] = {
            s.topic_client: processor.client_receipt,
            s.topic_membership: processor.membership,
            s.topic_events: processor.room_event,
            s.topic_federation_in: processor.remote_receipt,
            s.topic_ticks: lambda src, now: processor.tick(number, now),
        }

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


class FoldEngine:
    name = "fold"

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        s = self.s = settings
        self.backend = backend or rocks_backend(s.data_dir / "stores", s)
        self.limits = limits_of(s)
        self.changelogs = {
            "receipts": s.changelog_receipts,
            "room_state": s.changelog_state,
            "held": s.changelog_held,
        }
        self.room_keyed = set(s.room_keyed_inputs())
        self.streams = {FEDERATION_IN: s.topic_federation_in, FEDERATION_OUT: s.topic_outbox}
        self.splitter = Processor({}, {}, {}, self.limits)  # splitting EDUs reads no state
        self.parts: dict[int, Partition] = {}
        self.to_restore: set[int] = set()
        self.assigned = False
        self.inputs = InputBuffers(settings.input_idle_ms)
        self.more_ready = False  # the last batch was cut at its limit: fold on, do not wait
        self.in_flight: asyncio.Task[None] | None = None  # the batch being made durable
        self.lock = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------------

    def ready(self) -> bool:
        """Partitions assigned, and every assigned partition's stores restored."""
        return self.assigned and not self.to_restore

    async def run_forever(self) -> None:
        await supervise(self.name, self.run, on_failure=self._reset)

    def _reset(self) -> None:
        self.release(set(self.parts))
        self.assigned = False

    async def run(self) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.fold_batch_records,
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 250),
            fetch_max_wait_ms=50,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.producer_linger_ms,
            max_batch_size=1000 * 1000,  # under the broker's default message.max.bytes
        )
        await producer.start()
        try:
            consumer.subscribe(
                topics=[*s.room_keyed_inputs(), s.topic_federation], listener=_Rebalance(self)
            )
            await consumer.start()
            ticks = asyncio.create_task(self._send_ticks(producer))
            try:
                while True:
                    if self.in_flight is not None and self.in_flight.done():
                        self.in_flight.result()  # a batch that could not be made durable
                    wait = 0 if self.more_ready else 20 if self.inputs.pending() else 200
                    got = await consumer.getmany(timeout_ms=wait)
                    async with self.lock:
                        if self.to_restore:
                            await self._restore(sorted(self.to_restore))
                        federation, partitions = await self._ready(consumer, got)
                        if federation or partitions:
                            await self._fold_batch(federation, partitions, producer, consumer)
                    await metrics.record_lag(self.name, consumer)
            finally:
                ticks.cancel()
                if self.in_flight is not None:
                    self.in_flight.cancel()  # not committed: replayed at the next start
                await asyncio.gather(ticks, self.settle(), return_exceptions=True)
                self.in_flight = None
                await consumer.stop()
        finally:
            await producer.stop()
            self._reset()

    def assign(self, tps: list[TopicPartition]) -> None:
        room_keyed = [(tp.topic, tp.partition) for tp in tps if tp.topic in self.room_keyed]
        self.inputs.assign(room_keyed)
        for p in {p for _, p in room_keyed} - set(self.parts):
            self.parts[p] = Partition(
                p, {table: self.backend(table, p) for table in TABLES}, self.limits, self.s
            )
            self.to_restore.add(p)
        self.assigned = True

    def release(self, partitions: set[int]) -> None:
        for tp in list(self.inputs.buffers):
            if tp[1] in partitions:
                self.inputs.drop(tp)
        for p in partitions:
            part = self.parts.pop(p, None)
            if part is not None:
                part.close()
            self.to_restore.discard(p)

    async def _send_ticks(self, producer: AIOKafkaProducer) -> None:
        """Drive the grace-period sweep on every partition, busy or idle."""
        while True:
            await asyncio.sleep(self.s.tick_interval_s)
            stamp = str(now_ms()).encode()
            for p in range(self.s.partitions):
                await producer.send(self.s.topic_ticks, stamp, key=b"tick", partition=p)

    # --- restore -------------------------------------------------------------------------

    async def _restore(self, partitions: Sequence[int]) -> None:
        """Bring each store from its changelog offset to the changelog's end."""
        t0 = time.monotonic()
        stores = {
            TopicPartition(self.changelogs[table], p): (p, table)
            for p in partitions
            for table in TABLES
        }
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.bootstrap_servers,
            enable_auto_commit=False,
            max_poll_records=20_000,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        await consumer.start()
        restored = 0
        try:
            consumer.assign(list(stores))
            ends = await consumer.end_offsets(list(stores))
            remaining = set()
            for tp, (p, table) in stores.items():
                store = self.parts[p].stores[table]
                start = 0 if store.offset is None else store.offset + 1
                if start > ends[tp]:
                    # The store outlived its changelog (the topic was recreated): start over.
                    log.warning("store ahead of its changelog: rebuilt", extra={"tp": str(tp)})
                    self._recreate(p, table)
                    start = 0
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    remaining.add(tp)
            while remaining:
                got = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in got.items():
                    p, table = stores[tp]
                    writes = {r.key: r.value for r in records}
                    self.parts[p].stores[table].apply(writes, records[-1].offset)
                    restored += len(records)
                    if records[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                for tp in list(remaining):  # the end may be a compacted-away or control record
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        self.to_restore -= set(partitions)
        log.info(
            "stores restored",
            extra={
                "partitions": list(partitions),
                "records": restored,
                "seconds": round(time.monotonic() - t0, 3),
            },
        )

    def _recreate(self, p: int, table: str) -> None:
        part = self.parts[p]
        store = part.stores[table]
        store.close()
        if isinstance(store, RocksStore):
            RocksStore.destroy(store.path)
        part.stores[table] = self.backend(table, p)
        self.parts[p] = Partition(p, part.stores, self.limits, self.s)

    # --- one batch -----------------------------------------------------------------------

    async def _ready(
        self, consumer: AIOKafkaConsumer, got: dict[TopicPartition, list[Any]]
    ) -> tuple[list[Any], dict[int, list[Any]]]:
        """Buffer what was fetched; return the inbound EDUs and, per partition, the records
        that can be folded now (in timestamp order across its topics)."""
        federation: list[Any] = []
        for tp, records in got.items():
            if tp.topic in self.room_keyed:
                self.inputs.add((tp.topic, tp.partition), records, None)
            else:
                federation.extend(records)
        for topic, p in list(self.inputs.buffers):
            self.inputs.add((topic, p), [], consumer.highwater(TopicPartition(topic, p)))
        if unknown := [TopicPartition(*tp) for tp in self.inputs.unknown()]:
            # No fetch answered for these yet (an empty topic may never): ask the broker.
            for tp, end in (await consumer.end_offsets(unknown)).items():
                self.inputs.bound((tp.topic, tp.partition), await consumer.position(tp), end)
        now = now_ms()
        # A bounded batch, shared fairly by the partitions: a large batch costs more per
        # record (its memory is new to the process each time: page faults in the profile).
        limit = self.s.fold_batch_records
        share = max(1, limit // max(1, len(self.parts)))
        partitions = {p: ready for p in self.parts if (ready := self.inputs.take(p, now, share))}
        self.more_ready = any(len(ready) >= share for ready in partitions.values())
        # Back-pressure: a topic that runs ahead of its partition's others stops fetching.
        paused = consumer.paused()
        for topic, p in self.inputs.buffers:
            tp = TopicPartition(topic, p)
            size = self.inputs.buffered((topic, p))
            if size > limit and tp not in paused:
                consumer.pause(tp)
            elif size <= limit // 2 and tp in paused:
                consumer.resume(tp)
        return federation, partitions

    async def _fold_batch(
        self,
        federation: list[Any],
        partitions: dict[int, list[Any]],
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
    ) -> None:
        """Fold a batch, then hand it to a task that makes it durable, and let the next batch
        be folded meanwhile: at most one batch is in flight while the next one folds."""
        now = now_ms()
        outputs = self.fold(federation, {}, now)
        for p, records in partitions.items():
            for i in range(0, len(records), _YIELD_EVERY):
                outputs += self.fold([], {p: records[i : i + _YIELD_EVERY]}, now)
                await asyncio.sleep(0)  # the batch in flight gets on with its acks meanwhile
        touched = [self.parts[p] for p in partitions]
        first, held = self.changelog_writes(touched)
        sealed = [
            (part, table, view.seal()) for part in touched for table, view in part.views.items()
        ]
        done: dict[TopicPartition, int] = {}
        for record in federation + [r for records in partitions.values() for r in records]:
            tp = TopicPartition(record.topic, record.partition)
            done[tp] = max(record.offset + 1, done.get(tp, 0))
        previous = self.in_flight
        self.in_flight = asyncio.create_task(
            self._make_durable(previous, outputs + first, held, sealed, done, producer, consumer)
        )
        if previous is not None:
            await previous

    async def _make_durable(
        self,
        previous: asyncio.Task[None] | None,
        first: list[Output],
        held: list[Output],
        sealed: list[tuple[Partition, str, dict[bytes, bytes | None]]],
        done: dict[TopicPartition, int],
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
    ) -> None:
        """After the batch before it: send the outputs and the receipts and room-state
        changelog writes, then the held writes, each waiting for its acks; write the stores
        with the changelog offsets reached; commit the inputs."""
        if previous is not None:
            await previous  # batches become durable in order; a failure stops the ones after
        offsets = await send_all(producer, first)
        offsets.update(await send_all(producer, held))
        for part, table, writes in sealed:
            part.stores[table].apply(writes, offsets.get((self.changelogs[table], part.number)))
            part.views[table].settle(writes)
        try:
            await consumer.commit(done)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner replays from the last commit.
            log.warning("fold offsets not committed", extra={"error": repr(exc)})

    async def settle(self) -> None:
        """Wait for the batch in flight; its failure is the run loop's to raise."""
        if self.in_flight is not None:
            await asyncio.gather(self.in_flight, return_exceptions=True)

    def fold(
        self, federation: list[Any], partitions: dict[int, list[Any]], now: int
    ) -> list[Output]:
        """Run records through the core: inbound EDUs, then each partition's records in
        order. Returns the outputs; table writes stay in the partitions' overlays until
        `changelog_writes`."""
        outputs: list[Output] = []
        tally = Tally()
        for record in federation:  # keyed by origin: split, route each entry to its room
            tally.input(record.topic)
            effects = guarded(self.splitter, self.splitter.federation_edu, record, now)
            self._carry_out(None, effects, "federation", outputs, tally)
        for p, records in partitions.items():
            part = self.parts[p]
            for record in records:
                tally.input(record.topic)
                effects = guarded(part.processor, part.handlers[record.topic], record, now)
                source = "federation" if record.topic == self.s.topic_federation_in else "client"
                self._carry_out(part, effects, source, outputs, tally)
        tally.flush()
        return outputs

    def changelog_writes(self, parts: Sequence[Partition]) -> tuple[list[Output], list[Output]]:
        """The batch's table writes as changelog records: receipts and room state, then held
        receipts (sent only once the first list is acknowledged)."""
        first: list[Output] = []
        held: list[Output] = []
        for part in parts:
            for table, view in part.views.items():
                out = held if table == "held" else first
                topic = self.changelogs[table]
                out.extend((topic, k, v, part.number) for k, v in view.pending.items())
        return first, held

    def _carry_out(
        self,
        part: Partition | None,
        effects: list[Effect],
        source: str,
        outputs: list[Output],
        tally: Tally,
    ) -> None:
        for effect in effects:
            tally.effect(effect, source)
            if isinstance(effect, SendDlq):
                outputs.append((self.s.topic_dlq, effect.topic.encode(), effect.record, None))
            elif isinstance(effect, Emit):
                outputs.append((self.streams[effect.stream], effect.key, effect.value, None))
            elif isinstance(effect, HeldRemoval) and part is not None:
                # In the overlay at once, so the rest of the batch sees it; on the changelog
                # only after everything the held records became is acknowledged.
                part.processor.held.remove(effect.key, effect.records)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions move only between batches: the lock waits for the one folding, `settle`
    for the one being made durable."""

    def __init__(self, engine: FoldEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.engine.lock:
            await self.engine.settle()
            self.engine.release(
                {tp.partition for tp in revoked if tp.topic in self.engine.room_keyed}
            )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.engine.lock:
            self.engine.assign(list(assigned))
