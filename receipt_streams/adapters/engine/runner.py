"""The batch fold's run loop and rebalance listener (Kafka Streams' StreamThread and
TaskManager): consume a batch, fold it through the partition tasks, hand it to a checkpoint.

Faust hands an agent one event at a time, and a no-op agent already tops out near a fifth of
what plain aiokafka moves on the same broker (README, Performance). This engine keeps the
same topics, tables and changelogs, but works a batch at a time:

1. `getmany` a batch; per partition, merge its topics by timestamp (each topic partition keeps
   its order: `ordering.py`) and fold every record through the partition's task (`task.py`);
2. hand the batch to a `Checkpoint` (`checkpoint.py`) that makes it durable in a task of its
   own. At most one batch is in flight: while it is, what arrives is folded on top of it into
   the next batch, which is sealed and handed over the moment the one in flight is durable
   (or waits for it once it reaches `fold_batch_records`). The fold is CPU and the commit is
   the broker's time, so the two overlap, and a record waits for the commit in flight when it
   arrives and its own, not for a third.
3. a batch that fails on its contents (a record whose processing raises, an output or a
   changelog write the broker refuses) is split until the records at fault are found: those
   are parked in the DLQ, every other record is made durable once, in order, and the loop
   goes on from there (`isolation.py`). Any other failure (broker, network, fencing)
   restarts the loop from the last commit, with backoff.

Tasks are created on assignment: their sinks start first (with `exactly_once` this fences
the partition's previous owner), then the committed offsets are read afresh, then the stores
are restored (`restore.py`). On revocation the batch in flight is settled and the tasks
closed. Partitions are assigned with the range assignor, so partition `p` of every input
lands on the worker holding task `p`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from receipt_streams.adapters import metrics
from receipt_streams.adapters.client_ids import member_client_id
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.effects import Tally, limits_of
from receipt_streams.adapters.engine.checkpoint import BatchFailed, Checkpoint, make_durable
from receipt_streams.adapters.engine.ordering import InputBuffers
from receipt_streams.adapters.engine.restore import restore
from receipt_streams.adapters.engine.task import Backend, PartitionTask, rocks_backend
from receipt_streams.adapters.isolation import caused_by_contents, isolate
from receipt_streams.adapters.parking import ParkedLog, park_input
from receipt_streams.adapters.supervise import LoopHealth, supervise
from receipt_streams.adapters.transactions import (
    Fenced,
    PartitionSink,
    fence_and_seek,
    producer,
    read_committed,
    sink_for,
)
from receipt_streams.config import Settings

log = logging.getLogger(__name__)

_YIELD_EVERY = 250  # records folded between two turns of the event loop


class FoldEngine:
    name = "fold"

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        s = self.s = settings
        self.backend = backend or rocks_backend(s.data_dir / "stores", s)
        self.limits = limits_of(s)
        self.room_keyed = set(s.room_keyed_inputs())
        self.tasks: dict[int, PartitionTask] = {}
        self.to_restore: set[int] = set()
        self.assigned = False
        self.inputs = InputBuffers(settings.input_idle_ms)
        self.more_ready = False  # the last batch was cut at its limit: fold on, do not wait
        self.in_flight: asyncio.Task[None] | None = None  # the batch being made durable
        self.open_records = 0  # records folded into the batch not yet sealed
        self.open = False  # that batch holds something to commit (records or positions)
        self.lock = asyncio.Lock()
        self.health = LoopHealth.of(self.name)
        self.shared: Any = None  # the plain producer of the ticks
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}  # input offsets made durable

    # --- lifecycle -----------------------------------------------------------------------

    def ready(self) -> bool:
        """Partitions assigned, every assigned task restored, and the loop not stuck."""
        return self.assigned and not self.to_restore and self.health.problem() is None

    async def run_forever(self) -> None:
        await supervise(self.name, self.run, on_failure=self._reset)

    def _reset(self) -> None:
        for task in self.tasks.values():
            task.close()
        self.tasks.clear()
        self.to_restore.clear()
        self.committed.clear()
        for tp in list(self.inputs.buffers):
            self.inputs.drop(tp)
        self._forget_open()
        self.assigned = False

    def _forget_open(self) -> None:
        """The batch not yet sealed was rolled back or dropped with its tasks."""
        self.open_records, self.open = 0, False

    async def run(self) -> None:
        s = self.s
        consumer = self.consumer = read_committed(
            s,
            group_id=s.app_id,
            client_id=member_client_id(s, "fold"),
            auto_offset_reset="earliest",
            max_poll_records=s.fold_batch_records,
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 250),
            fetch_max_wait_ms=50,
        )
        self.shared = producer(s)
        await self.shared.start()
        try:
            consumer.subscribe(
                topics=[*s.room_keyed_inputs(), s.topic_federation], listener=_Rebalance(self)
            )
            await consumer.start()
            ticks = asyncio.create_task(self._send_ticks())
            try:
                while True:
                    async with self.lock:
                        await self._check_in_flight()  # a batch that could not be made durable
                    got = await self._fetch(consumer)
                    async with self.lock:
                        if self.to_restore:
                            await restore(s, [self.tasks[p] for p in sorted(self.to_restore)])
                            self.to_restore.clear()
                        federation, partitions = await self._ready(consumer, got)
                        moved = await self._positions_moved(consumer)
                        if federation or partitions or moved:
                            await self._fold_batch(federation, partitions)
                        if self.open:
                            await self._hand_over()
                        elif self.in_flight is None or (
                            self.in_flight.done() and self._in_flight_failure() is None
                        ):
                            self.health.succeeded()  # idle and nothing failing
                    await metrics.record_lag(self.name, consumer)
            finally:
                ticks.cancel()
                if self.in_flight is not None:
                    self.in_flight.cancel()  # not committed: replayed at the next start
                await asyncio.gather(ticks, self.settle(), return_exceptions=True)
                self.in_flight = None
                await self._close_tasks(set(self.tasks))
                await consumer.stop()
        except Fenced:
            metrics.child(metrics.FENCED, self.name).inc()
            raise
        finally:
            await self.shared.stop()
            self._reset()

    def _sink(self, p: int) -> PartitionSink:
        assert self.consumer is not None
        s = self.s
        return sink_for(s, f"{s.app_id}-{p}", s.app_id, self.consumer)

    async def assign(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """New tasks: start their sinks (fencing earlier owners), re-read their committed
        offsets, and queue their stores for restore."""
        self.inputs.assign([(tp.topic, tp.partition) for tp in tps if tp.topic in self.room_keyed])
        new = sorted({tp.partition for tp in tps} - set(self.tasks))
        tasks = {p: PartitionTask(p, self.backend, self.limits, self.s, self._sink(p)) for p in new}
        self.tasks.update(tasks)
        self.to_restore.update(new)
        await fence_and_seek(
            consumer, [t.sink for t in tasks.values()], [tp for tp in tps if tp.partition in tasks]
        )
        self.assigned = True

    async def _close_tasks(self, partitions: set[int]) -> None:
        for tp in list(self.inputs.buffers):
            if tp[1] in partitions:
                self.inputs.drop(tp)
        for p in partitions:
            task = self.tasks.pop(p, None)
            if task is not None:
                task.close()
                await task.sink.stop()
            self.to_restore.discard(p)
        for tp in [tp for tp in self.committed if tp.partition in partitions]:
            del self.committed[tp]  # its next owner moves it on: read it afresh if it comes back

    async def revoke(self, partitions: set[int]) -> None:
        await self.settle()
        failed = self._in_flight_failure()
        if failed is not None:
            if not (isinstance(failed, BatchFailed) and failed.on_contents()):
                return  # the run loop raises it and starts over
            for p in partitions:  # their next owner replays them (and splits them in turn)
                failed.failures.pop(p, None)
        await self._close_tasks(partitions)

    async def _send_ticks(self) -> None:
        """Drive the grace-period sweep on every partition, busy or idle."""
        while True:
            await asyncio.sleep(self.s.tick_interval_s)
            stamp = str(now_ms()).encode()
            for p in range(self.s.partitions):
                await self.shared.send(self.s.topic_ticks, stamp, key=b"tick", partition=p)

    # --- one batch -----------------------------------------------------------------------

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """The next records; while a batch is in flight and another waits to follow it, no
        longer than until the one in flight is durable (the one waiting goes at once)."""
        wait = 0 if self.more_ready else 20 if self.inputs.pending() else 200
        in_flight = self.in_flight
        if not self.open or in_flight is None or in_flight.done() or wait == 0:
            return await consumer.getmany(timeout_ms=wait)
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=wait))
        await asyncio.wait({fetch, in_flight}, return_when=asyncio.FIRST_COMPLETED)
        if fetch.done():
            return fetch.result()
        # Records are taken from the fetcher only once its wait is over: cancelling the
        # wait loses none.
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)
        return {}

    async def _ready(
        self, consumer: AIOKafkaConsumer, got: dict[TopicPartition, list[Any]]
    ) -> tuple[list[Any], dict[int, list[Any]]]:
        """Buffer what was fetched; return the inbound EDUs and, per partition, the records
        that can be folded now (in timestamp order across its topics)."""
        federation: list[Any] = []
        assigned = consumer.assignment()
        for tp, records in got.items():
            if tp.topic in self.room_keyed:
                self.inputs.add((tp.topic, tp.partition), records, None)
            else:
                federation.extend(records)
        for topic, p in list(self.inputs.buffers):
            tp = TopicPartition(topic, p)
            if tp in assigned:
                self.inputs.add((topic, p), [], consumer.highwater(tp), await consumer.position(tp))
        if unknown := [TopicPartition(*tp) for tp in self.inputs.unknown()]:
            # No fetch answered for these yet (an empty topic may never): ask the broker.
            for tp, end in (await consumer.end_offsets(unknown)).items():
                self.inputs.bound((tp.topic, tp.partition), await consumer.position(tp), end)
        now = now_ms()
        # A bounded batch, shared fairly by the partitions: a large batch costs more per
        # record (its memory is new to the process each time: page faults in the profile).
        limit = self.s.fold_batch_records
        share = max(1, limit // max(1, len(self.tasks)))
        partitions = {p: ready for p in self.tasks if (ready := self.inputs.take(p, now, share))}
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

    async def _positions_moved(self, consumer: AIOKafkaConsumer) -> bool:
        """Put in the tasks' batches the position of every input partition with nothing
        left to fold: past a transaction marker, the position is beyond the last record, and
        a group caught up commits it (else it would show a lag of one forever)."""
        moved = False
        for tp in consumer.assignment():
            task = self.tasks.get(tp.partition)
            if task is None or self.inputs.buffered((tp.topic, tp.partition)):
                continue
            position = await consumer.position(tp)
            if position > max(task.offsets.get(tp, -1), self.committed.get(tp, -1)):
                task.offsets[tp] = position
                moved = True
        return moved

    async def _fold_batch(self, federation: list[Any], partitions: dict[int, list[Any]]) -> None:
        """Fold what was fetched into the batch not yet sealed (on top of the one in flight:
        its writes are in the overlays)."""
        now = now_ms()
        tally = Tally()
        todo: dict[int, list[Any]] = {}
        for record in federation:  # keyed by origin: split, each entry routed to its room
            todo.setdefault(record.partition, []).append(record)
        for p, records in partitions.items():
            todo.setdefault(p, []).extend(records)
        self.open = True
        for p, records in todo.items():
            task = self.tasks[p]
            start = len(task.records)  # this task's part of the batch folded before: [:start]
            try:
                for i in range(0, len(records), _YIELD_EVERY):
                    task.fold(records[i : i + _YIELD_EVERY], now, tally)
                    await asyncio.sleep(0)  # the batch in flight gets on with its commit
            except Exception as exc:
                if not caused_by_contents(exc):
                    raise
                await self._fold_failed(p, task.records[:start] + records, exc)
                return
            self.open_records += len(records)
        tally.flush()

    async def _hand_over(self) -> None:
        """Seal the batch and hand it to a checkpoint made durable in a task of its own, once
        the one in flight is durable: at most one batch is in flight. Until then it goes on
        growing, up to `fold_batch_records`."""
        in_flight = self.in_flight
        if in_flight is not None and not in_flight.done():
            if self.open_records < self.s.fold_batch_records:
                return
            await self.settle()
        if self._in_flight_failure() is not None:
            return  # the run loop splits or restarts; this batch is rolled back with it
        metrics.BATCH_RECORDS.observe(self.open_records)
        self._forget_open()
        sealed = [(task, batch) for task in self.tasks.values() if (batch := task.seal())]
        if sealed:
            checkpoint = Checkpoint(sealed, self.committed)
            self.in_flight = asyncio.create_task(self._checkpoint(checkpoint, None))

    async def _checkpoint(
        self, checkpoint: Checkpoint, previous: asyncio.Task[None] | None
    ) -> None:
        await checkpoint.commit(previous)
        self.health.succeeded()

    # --- a batch that fails on its contents ------------------------------------------------

    def _in_flight_failure(self) -> BaseException | None:
        task = self.in_flight
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def _check_in_flight(self) -> None:
        """The batch in flight failed: split it to park the records at fault, or, when no
        record is (broker, network, fencing), raise: the loop restarts from the last commit."""
        failed = self._in_flight_failure()
        if failed is None:
            return
        self.in_flight = None
        if isinstance(failed, BatchFailed) and failed.on_contents():
            await self._recover(failed.failures)
        elif isinstance(failed, BatchFailed):
            raise failed.cause() from failed
        else:
            raise failed

    async def _fold_failed(self, p: int, records: list[Any], exc: BaseException) -> None:
        """Folding `records` on task `p` raised outside the per-record guard."""
        await self.settle()  # batches are made durable in order: the one in flight first
        if self._in_flight_failure() is not None:
            await self._check_in_flight()  # rolls this batch back too: it is read again
            return
        self.in_flight = None
        await self._recover({p: (records, exc)})

    async def _recover(self, failures: dict[int, tuple[list[Any], BaseException]]) -> None:
        """Every task back to what is committed; each failed task's records made durable
        again in halves, the records at fault parked; then every input read again from what
        is durable."""
        assert self.consumer is not None
        metrics.child(metrics.ISOLATIONS, self.name).inc()
        log.warning(
            "a batch failed on its contents: splitting it to park the records at fault",
            extra={
                "partitions": sorted(failures),
                "records": sum(len(records) for records, _ in failures.values()),
                "error": "; ".join(repr(exc)[:200] for _, exc in failures.values()),
            },
        )
        for task in self.tasks.values():
            task.rollback()
        self._forget_open()
        for p, (records, _) in sorted(failures.items()):
            task = self.tasks.get(p)
            if task is None:
                continue  # revoked: its next owner replays the batch
            await task.sink.reset()  # a refused send leaves the producer unusable
            parked = await isolate(
                records,
                lambda part, task=task: self._attempt(task, part),  # type: ignore[misc]
                lambda record, exc, task=task: self._park(task, record, exc),  # type: ignore[misc]
            )
            extra = {"partition": p, "records": len(records), "parked": len(parked)}
            log.info("batch split", extra=extra)
        await self._rewind(self.consumer)
        self.health.succeeded()

    async def _attempt(self, task: PartitionTask, records: Any) -> BaseException | None:
        """Fold `records` from what is committed and make them durable; on a failure their
        contents may cause, undo them and return it."""
        tally = Tally()
        try:
            task.fold(records, now_ms(), tally)
        except Exception as exc:
            if not caused_by_contents(exc):
                raise
            task.rollback()
            return exc
        batch = task.seal()  # the engine's own step: a failure here is no record's
        if batch is not None:
            try:
                await make_durable(task, batch, self.committed)
            except Exception as exc:
                if not caused_by_contents(exc):
                    raise
                task.rollback()
                await task.sink.reset()  # the refused records took sequence numbers
                return exc
        tally.flush()
        return None

    async def _park(self, task: PartitionTask, record: Any, exc: BaseException) -> None:
        """Past `record`: its DLQ record and the offset after it, in one commit."""
        offsets = {TopicPartition(record.topic, record.partition): record.offset + 1}
        await task.sink.publish([[park_input(self.s, record, exc)]], offsets)
        self.committed.update(offsets)
        ParkedLog.input_parked(record, exc)

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        """Every assigned input read again from what is durable."""
        for tp in consumer.assignment():
            offset = self.committed.get(tp)
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        self.inputs.rewind()
        self.more_ready = False

    async def settle(self) -> None:
        """Wait for the batch in flight; its failure is the run loop's to raise."""
        if self.in_flight is not None:
            await asyncio.gather(self.in_flight, return_exceptions=True)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions move only between batches: the lock waits for the one folding, `settle`
    for the one being made durable."""

    def __init__(self, engine: FoldEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.engine.lock:
            await self.engine.revoke({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.engine.lock:
            assert self.engine.consumer is not None
            await self.engine.assign(self.engine.consumer, list(assigned))
