"""Commit only what the fold processed, never past a record it did not, and fold each input
partition in offset order.

Faust (0.15) decides what to commit from "acks", and around a rebalance or a broker outage it
loses records between the fetcher and the agents in ways that reach the commit:

- its streams ack the events they *skip* (an event that reaches a stream while flow control is
  suspended, or that was fetched under an older consumer generation, is dropped unprocessed and
  acked "so the lag does not grow"); the commit that the revocation makes then moves the
  group's offset past a record nobody folded;
- its fetch loop drops records fetched before a rebalance or a seek, and when the next record
  it sees for a partition is further on, it records the offsets in between as a "gap", which
  counts as acked: the commit skips them (it exists for compacted topics and transaction
  markers, but is not told apart from a drop);
- it commits past an unacked head record (`_new_offset` tolerates a hole of one at the head);
- a hole of two or more at the head stops the partition's commits until the next rebalance,
  while its later records go on being folded (the group looks stuck; nothing reads the
  missing ones again).

So `FoldConsumer`, for the fold's input topics: counts an event as acked only when one of our
agents marked it processed; ignores the fetch loop's unverified gaps; commits nothing while the
committed offset's record is neither processed nor known absent (nor, between a revocation and
the seek after it, while the committed offset is unknown: Faust would commit whatever was
acked meanwhile); and a stall that lasts `STALL_S` is repaired: a throwaway reader looks at
the log from the committed offset, offsets with no record there (transaction markers) become
a verified gap, and if the record is there the partition is read again from it (`rewind()`).

And it folds each partition in order, which "latest receipt wins" needs (receipts on the same
event: the first one read wins). Faust does not keep that order: around a rebalance or a seek
its fetch loop goes on delivering a batch fetched before, and then drops the records read
again as already seen (its "read offset" moved past them), while the records after them are
folded. So, for the fold's inputs:

- `admit()`, called by the agents before they fold a record, lets through only the next
  offset of its partition (`_next`, from the committed offset at every seek Faust makes);
  a record before it was folded already since that seek: it is done, not folded again;
- a record after it means records were lost on the way: a throwaway reader looks at the log
  from `_next`. If no record lies between (transaction markers), the record is folded; if
  one does, the record is left unprocessed and the partition is rewound (`rewind()`): seeked
  back to the first missing record, and what is fetched for it is dropped (`getmany`) until
  that record comes again, so the partition is read again in order from there;
- Faust's own "already read" filter (`_read_offset`) is switched off for these partitions
  (it is what dropped the records read again); `admit()` takes its place.

Two more ways Faust loses records, with no later record to show it: its fetch loop gives up
the rest of a fetched batch when a rebalance begins, after aiokafka moved past it
(`_note_dropped`: read again unless a seek did); and, as the last resort whatever the cause, a
partition with records to fold that had none fetched, folded or committed for `WATCH_S` is
read again from its committed offset (`_watch_progress`, with a warning saying what held it).
A record fetched between an assignment and Faust's seek after it waits for that seek (the
committed offset is unknown until then).

That makes the faust engine at least once across rebalances, crashes and broker restarts,
folding each partition's records in offset order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from weakref import WeakSet

import faust.streams
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from receipt_streams.adapters import metrics

log = logging.getLogger(__name__)

STALL_S = 2.0
#: A partition with records to fold that has had none fetched, folded or committed for this
#: long is read again from its committed offset (whatever held it: see `_watch_progress`).
WATCH_S = 10.0
#: The longest wait for a record a partition was seeked back to before seeking again (the
#: wait doubles from 2 * STALL_S for each seek to the same record).
REWIND_WAIT_MAX_S = 30.0


class Processed:
    """The messages our agents folded (weakly held: Faust drops them once acked)."""

    def __init__(self) -> None:
        self.messages: WeakSet[Message] = WeakSet()
        self.topics: set[str] = set()

    def guard(self, *topics: str) -> None:
        self.topics.update(topics)

    def mark(self, message: Message) -> None:
        self.messages.add(message)

    def guarded(self, topic: str) -> bool:
        return topic in self.topics


class FoldConsumer(Consumer):
    """Faust's aiokafka consumer, made at least once and in order for the fold's inputs."""

    processed: Processed
    bootstrap: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Partitions whose commit waits for an unprocessed record: (committed, since).
        self._stalls: dict[TP, tuple[int, float]] = {}
        #: The next offset to fold, per partition of the fold's inputs.
        self._next: dict[TP, int] = {}
        #: Bumped whenever `_next` is set again by a seek (a fold begun before is stale).
        self._epoch: dict[TP, int] = {}
        #: The record being folded, per partition: (epoch, offset), set by `admit()`.
        self._folding: dict[TP, tuple[int, int]] = {}
        #: What the log holds from `_next`: (`_next`, offset of the first record there).
        self._looked: dict[TP, tuple[int, int]] = {}
        #: Partitions seeked back: (offset they were seeked to, since, how long to wait for
        #: it before seeking again). Until that record is fetched again, what is fetched for
        #: them was fetched before the seek: dropped.
        self._rewinds: dict[TP, tuple[int, float, float]] = {}
        #: Partitions with a record after `_next` whose log could not be looked at: since.
        self._unsure: dict[TP, float] = {}
        #: Partitions assigned and not yet seeked to their committed offset: since.
        self._seeking: dict[TP, float] = {}
        #: Of those, the ones with a record let go meanwhile (`admit()`; cleared with them).
        self._let_go: set[TP] = set()
        #: Partitions whose fetched records Faust dropped (`_note_dropped`): the first one.
        self._dropped: dict[TP, int] = {}
        #: The records of the last fetch, as Faust's fetch loop got them.
        self._batch: Any = None
        #: Records fetched and handed on, per partition (counted, to see that some come).
        self._fetched: dict[TP, int] = {}
        #: (`_next`, committed offset, records fetched) per partition, and since when.
        self._progress: dict[TP, tuple[tuple[int | None, int | None, int], float]] = {}
        super().__init__(*args, **kwargs)

    # --- order ------------------------------------------------------------------------

    async def admit(self, message: Message) -> bool:
        """May the agent fold this record now? Call `done()` once it is folded.

        False for a record folded already since the last seek (marked done: it is not
        folded again) and for one whose partition has records missing before it (left
        unprocessed: the partition is rewound and it comes again, after them)."""
        tp, offset = message.tp, message.offset
        if not self.processed.guarded(tp.topic):
            return True
        expected = self._next.get(tp)
        if expected is None:
            if tp in self._seeking:
                # Fetched between a revocation and the seek Faust makes to the committed
                # offset, which is unknown meanwhile: it comes again after that seek.
                self._let_go.add(tp)
                return False
            expected = self._next[tp] = self._start_of(tp)  # no seek seen since start
        epoch = self._epoch.get(tp, 0)
        if offset < expected:
            self.processed.mark(message)
            return False
        if offset > expected:
            first = await self._first_record(tp, expected)
            if self._epoch.get(tp, 0) != epoch:
                return False  # seeked meanwhile: it comes again
            if first is None:
                return False  # the log could not be read: `_repair_stalls` tries again
            if first < offset:
                if tp not in self._rewinds:
                    log.info(
                        "%s[%d]: @%d came before @%d, which faust dropped: reading again from "
                        "there, in order",
                        tp.topic,
                        tp.partition,
                        offset,
                        first,
                    )
                    metrics.child(metrics.PARTITION_REPAIRS, "out_of_order").inc()
                    await self.rewind(tp, first)
                return False
            # Nothing but transaction markers (or deleted records) between: fold it, and
            # let the commit pass over them.
            self._gap[tp].addi(expected, offset)
        self._folding[tp] = (epoch, offset)
        return True

    def done(self, message: Message) -> None:
        """The agent folded `message` (after `admit()` said so)."""
        self.processed.mark(message)
        tp = message.tp
        if self._folding.get(tp) == (self._epoch.get(tp, 0), message.offset):
            del self._folding[tp]
            self._next[tp] = message.offset + 1

    def _start_of(self, tp: TP) -> int:
        """Where the fold of `tp` starts: its committed offset, else the log's start (0
        stands for it: `first_offset_from` reads from the log's first record on)."""
        return self._committed_offset.get(tp) or 0

    async def _first_record(self, tp: TP, offset: int, *, retry: bool = False) -> int | None:
        """The offset of the first record at or after `offset` in `tp`, looked up once (after
        a failed look, only `_repair_stalls` looks again: `retry`)."""
        looked = self._looked.get(tp)
        if looked is not None and looked[0] == offset:
            return looked[1]
        if tp in self._unsure and not retry:
            return None
        first = await first_offset_from(self.bootstrap, tp, offset)
        if first is None:
            self._unsure.setdefault(tp, time.monotonic())
            return None
        self._unsure.pop(tp, None)
        self._looked[tp] = (offset, first)
        return first

    async def rewind(self, tp: TP, offset: int) -> None:
        """Read `tp` again from `offset` (a record's offset), dropping what was fetched."""
        if tp not in self.assignment():
            return  # revoked meanwhile: read from its committed offset by its next owner
        # Each seek drops the batch fetched for the partition: seeking again for the same
        # record before a busy fetch loop took the last batch would never let it through.
        before = self._rewinds.get(tp)
        wait = min(2 * before[2], REWIND_WAIT_MAX_S) if before and before[0] == offset else 0
        self._rewinds[tp] = (offset, time.monotonic(), wait or 2 * STALL_S)
        self._unsure.pop(tp, None)
        try:
            await self.seek_wait({tp: offset})
        except Exception as exc:  # `_repair_stalls` seeks again
            log.warning("could not seek %s[%d] to %d: %r", tp.topic, tp.partition, offset, exc)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active = await super()._wait_next_records(timeout)
        self._batch = records
        return records, active

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        self._batch = None
        seen: dict[TP, int] = {}
        async for tp, message in super().getmany(timeout):
            if self.processed.guarded(tp.topic):
                seen[tp] = message.offset
                rewind = self._rewinds.get(tp)
                if rewind is not None:
                    if message.offset != rewind[0]:
                        continue  # fetched before the seek back
                    del self._rewinds[tp]
                self._fetched[tp] = self._fetched.get(tp, 0) + 1
                # Faust drops a record read again when its read offset moved past it (a
                # batch fetched before a seek went on being delivered): `admit()` orders.
                self._read_offset[tp] = None
            yield tp, message
        self._note_dropped(seen)

    def _note_dropped(self, seen: dict[TP, int]) -> None:
        """Faust's fetch loop gives up the rest of a fetched batch when the consumer
        generation changes or the flow stops while it hands it on, and drops the records of
        a partition no longer active: aiokafka has moved past them. A seek to the committed
        offsets after that reads them again, but one made before it does not, and nothing
        folds them until a later record shows they are missing (`admit()`): at the end of a
        partition, never. So each is noted, and `_repair_once` reads its partition again
        from the first such record unless a seek did meanwhile."""
        for tp, records in (self._batch or {}).items():
            if not records or not self.processed.guarded(tp.topic):
                continue
            last = seen.get(tp, -1)
            expected = self._next.get(tp)
            if expected is None or records[-1].offset <= last:
                continue  # all handed on; or a seek to come reads them again
            first = next(
                (r.offset for r in records if r.offset > last and r.offset >= expected), None
            )
            if first is not None:
                self._dropped[tp] = min(first, self._dropped.get(tp, first))
        self._batch = None

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Faust's recovery seeks a changelog partition with nothing read to one before its
        earliest offset, counting -1 as "from the start"; in a fleet run around a broker restart
        and two rebalances it asked for an offset below -1, aiokafka refused it ("Offset must
        be a positive integer"), and the worker crashed. Any offset below 0 means the start."""
        await super().seek_wait({tp: max(offset or 0, 0) for tp, offset in partitions.items()})

    async def perform_seek(self) -> None:
        """Faust seeks every partition to its committed offset (after a rebalance, or when
        it fetched while stopped): each partition is folded from there again. It does not
        seek one with nothing committed: one just assigned whose records `admit()` let go
        before this seek is seeked to its log's start here, so that they come again."""
        await super().perform_seek()
        unseeked = []
        for tp in self.assignment():
            if self.processed.guarded(tp.topic):
                self._forget(tp)
                self._seeking.pop(tp, None)
                if tp in self._let_go and not self._committed_offset.get(tp):
                    unseeked.append(tp)
                self._let_go.discard(tp)
                self._next[tp] = self._start_of(tp)
        if unseeked:  # offset 0: the log's first record (an offset reset if it starts later)
            try:
                await self.seek_wait({tp: 0 for tp in unseeked})
            except Exception as exc:  # `_watch_progress` reads them again
                log.warning("could not seek %s to their start: %r", sorted(unseeked), exc)

    def _forget(self, tp: TP) -> None:
        self._epoch[tp] = self._epoch.get(tp, 0) + 1
        for state in (
            self._next,
            self._folding,
            self._looked,
            self._rewinds,
            self._unsure,
            self._progress,
            self._dropped,
        ):
            state.pop(tp, None)

    # --- commits ----------------------------------------------------------------------

    def ack(self, message: Message) -> bool:
        if not self.processed.guarded(message.topic) or message in self.processed.messages:
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            # Released, so nothing waits for it (wait_empty), but not committable.
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
        log.debug(
            "%s[%d]@%d not folded (skipped by faust, or out of order): left uncommitted",
            message.topic,
            message.partition,
            message.offset,
        )
        return False

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if self.processed.guarded(tp.topic):
            return  # unverified: a drop looks the same; a stall verifies it (_repair)
        await super()._add_gap(tp, offset_from, offset_to)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked.get(tp)
        if self.processed.guarded(tp.topic) and acked:
            # Unknown between a revocation and the seek that follows it (Faust would commit
            # whatever was acked meanwhile): then the head must be the log's first offset.
            base = self._committed_offset.get(tp) or 0
            if min(acked) > base and not self._gap[tp].overlaps(base):
                # The base offset's record is neither processed nor known absent.
                since = self._stalls.get(tp)
                if since is None or since[0] != base:
                    self._stalls[tp] = (base, time.monotonic())
                return None
        self._stalls.pop(tp, None)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._stalls.pop(tp, None)
            self._seeking.pop(tp, None)
            self._let_go.discard(tp)
            self._forget(tp)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        now = time.monotonic()
        for tp in assigned:
            if self.processed.guarded(tp.topic) and tp not in self._next:
                self._seeking[tp] = now
        await super().on_partitions_assigned(assigned, generation_id)

    @Service.task
    async def _repair_stalls(self) -> None:
        while not self.should_stop:
            await self.sleep(STALL_S / 2)
            if self.app.rebalancing or not self.flow_active:
                continue
            try:
                await self._repair_once()
            except Exception as exc:  # the next round tries again
                log.warning("repairing stalled partitions failed: %r", exc)

    async def _repair_once(self) -> None:
        """Stalled commits, rewinds whose record did not come, logs that could not be read."""
        now = time.monotonic()
        for tp, (base, since) in list(self._stalls.items()):
            if tp in self._rewinds:
                continue  # being read again already (seeked again below if it does not come)
            if now - since >= STALL_S and (self._committed_offset.get(tp) or 0) == base:
                await self._repair(tp, base)
                self._stalls[tp] = (base, time.monotonic())
        for tp, (offset, since, wait) in list(self._rewinds.items()):
            if now - since >= wait and self._rewinds.get(tp) == (offset, since, wait):
                log.warning(
                    "%s[%d]: @%d not fetched again yet: seeking again",
                    tp.topic,
                    tp.partition,
                    offset,
                )
                await self.rewind(tp, offset)
        for tp, since in list(self._unsure.items()):
            expected = self._next.get(tp)
            if now - since >= STALL_S and expected is not None and tp not in self._rewinds:
                first = await self._first_record(tp, expected, retry=True)
                if first is not None:
                    await self.rewind(tp, first)
        for tp, first in list(self._dropped.items()):
            del self._dropped[tp]
            expected = self._next.get(tp)
            if expected is None or expected > first or tp in self._rewinds:
                continue  # seeked, or read again in order, meanwhile
            log.info(
                "%s[%d]: faust dropped @%d on, fetched while a rebalance began: reading again",
                tp.topic,
                tp.partition,
                first,
            )
            metrics.child(metrics.PARTITION_REPAIRS, "dropped_fetch").inc()
            await self.rewind(tp, first)
        await self._watch_progress(now)

    async def _watch_progress(self, now: float) -> None:
        """The last resort: a partition that has records to fold and has neither fetched,
        folded nor committed one for `WATCH_S` is read again from its committed offset,
        fetching resumed, whatever held it (a seek Faust never made, a partition its flow control
        left out of the fetch, a rewind lost): logged with what held it, and counted."""
        if self.app.in_recovery:
            return
        if any(now - since >= WATCH_S for since in self._seeking.values()):
            waiting = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._seeking)
            log.warning("no seek to the committed offsets since %s were assigned: seeking", waiting)
            metrics.child(metrics.PARTITION_REPAIRS, "no_seek").inc()
            await self.perform_seek()
            return
        idle = []
        for tp in self.assignment():
            if not self.processed.guarded(tp.topic) or tp in self._seeking:
                continue
            mark = (self._next.get(tp), self._committed_offset.get(tp), self._fetched.get(tp, 0))
            seen = self._progress.get(tp)
            if seen is None or seen[0] != mark:
                self._progress[tp] = (mark, now)
            elif now - seen[1] >= WATCH_S and tp not in self._folding:
                rewind = self._rewinds.get(tp)
                if rewind is None or now - rewind[1] >= WATCH_S:  # else its own wait is on
                    idle.append(tp)
        if not idle:
            return
        ends = await self.highwaters(*idle)
        for tp in idle:
            seen = self._progress.get(tp)
            if seen is None:
                continue  # seeked or revoked meanwhile
            self._progress[tp] = (seen[0], time.monotonic())  # looked at once a round
            committed = self._committed_offset.get(tp) or 0
            if ends.get(tp, 0) <= committed:
                continue  # at the end: nothing to fold
            first = await first_offset_from(self.bootstrap, tp, committed)
            if first is None or tp not in self.assignment():
                continue  # nothing but transaction markers, or the log was not readable
            log.warning(
                "%s[%d]: no progress for %.0f s with records to fold (committed %d, end %d, "
                "next to fold %s, fetching %s, flow-controlled %s, rewound to %s, unsure %s; "
                "aiokafka: %s): reading it again from %d",
                tp.topic,
                tp.partition,
                WATCH_S,
                committed,
                ends.get(tp, 0),
                self._next.get(tp),
                tp in self._get_active_partitions(),
                tp in self._buffered_partitions,
                self._rewinds.get(tp, (None,))[0],
                tp in self._unsure,
                self._aiokafka_state(tp),
                first,
            )
            metrics.child(metrics.PARTITION_REPAIRS, "no_progress").inc()
            self._buffered_partitions.discard(tp)
            self.resume_partitions([tp])
            self._unsure.pop(tp, None)
            await self.rewind(tp, first)

    def _aiokafka_state(self, tp: TP) -> str:
        """What aiokafka's fetcher holds for `tp` (read from Faust's consumer thread, for a
        log line only): its position, pause, reset and buffered batch."""
        try:
            consumer = self._thread._consumer
            state = consumer._subscription.subscription.assignment.state_value(tp)
            buffered = consumer._fetcher._records.get(tp)
            return (
                f"position {state._position}, paused {state.paused}, awaiting reset "
                f"{state.awaiting_reset}, batch buffered {buffered is not None}"
            )
        except Exception as exc:  # internals of a pinned version: a log line must not fail
            return f"unknown ({exc!r})"

    async def _repair(self, tp: TP, committed: int) -> None:
        """A partition whose commit waits for a record never processed: look at the log."""
        if tp not in self.assignment():
            return
        first = await first_offset_from(self.bootstrap, tp, committed)
        if first is None:
            return
        head = min(self._acked.get(tp) or [first])
        if first > committed:
            # No record between: transaction markers (or deleted). Commit over them.
            self._gap[tp].addi(committed, first)
            log.info(
                "%s[%d]: no records in [%d, %d) (transaction markers): committing over them",
                tp.topic,
                tp.partition,
                committed,
                first,
            )
            return
        log.warning(
            "%s[%d]@%d was dropped by faust, never folded (acked from %d on): reading again",
            tp.topic,
            tp.partition,
            committed,
            head,
        )
        metrics.child(metrics.PARTITION_REPAIRS, "commit_stalled").inc()
        await self.rewind(tp, committed)


async def first_offset_from(bootstrap: str, tp: TP, offset: int) -> int | None:
    """The offset of the first record at or after `offset` in `tp` (markers have none; an
    offset before the log's start reads from its first record)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_uncommitted",
        auto_offset_reset="earliest",
    )
    try:
        await asyncio.wait_for(reader.start(), timeout=10)
        part = TopicPartition(tp.topic, tp.partition)
        reader.assign([part])
        reader.seek(part, offset)
        batch = await asyncio.wait_for(reader.getmany(part, timeout_ms=3000), timeout=10)
        records = batch.get(part, [])
        return records[0].offset if records else None
    except Exception as exc:  # a broker still away: the next stall check tries again
        log.warning("could not look at %s[%d]: %r", tp.topic, tp.partition, exc)
        return None
    finally:
        await reader.stop()


def consumer_class(processed: Processed, bootstrap: str) -> type[FoldConsumer]:
    """A FoldConsumer bound to one app's `Processed` (set as the transport's Consumer).

    Faust's Cython stream iterator (used whenever its extension is built, as in the wheels)
    inlines `Consumer.ack`: it appends each event's offset to the consumer's acked offsets
    itself, so `FoldConsumer.ack` is never called and every event a stream lets go, folded
    or not, becomes committable. Faust's pure-Python iterator acks through `Consumer.ack`:
    it is the one used."""
    faust.streams._CStreamIterator = None
    attrs = {"processed": processed, "bootstrap": bootstrap, "__module__": __name__}
    return type("FoldConsumer", (FoldConsumer,), attrs)
