"""Commit only what the fold processed, and never past a record it did not.

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
acked meanwhile); and a stall that lasts
`STALL_S` is repaired: a throwaway reader looks at the log from the committed offset, offsets
with no record there (transaction markers) become a verified gap, and if the record is there
the partition is seeked back to it, so it is read and folded again (the fold is idempotent).
That makes the faust engine at least once across rebalances, crashes and broker restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from weakref import WeakSet

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

log = logging.getLogger(__name__)

STALL_S = 2.0


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
    """Faust's aiokafka consumer, made at least once for the fold's inputs."""

    processed: Processed
    bootstrap: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Partitions whose commit waits for an unprocessed record: (committed, since).
        self._stalls: dict[TP, tuple[int, float]] = {}
        super().__init__(*args, **kwargs)

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
        log.info(
            "faust skipped %s[%d]@%d during a rebalance: left uncommitted, to be read again",
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
        await super().on_partitions_revoked(revoked)

    @Service.task
    async def _repair_stalls(self) -> None:
        while not self.should_stop:
            await self.sleep(STALL_S / 2)
            if self.app.rebalancing or not self.flow_active:
                continue
            now = time.monotonic()
            for tp, (base, since) in list(self._stalls.items()):
                if now - since >= STALL_S and (self._committed_offset.get(tp) or 0) == base:
                    await self._repair(tp, base)
                    self._stalls[tp] = (base, time.monotonic())

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
        await self.seek_wait({tp: committed})


async def first_offset_from(bootstrap: str, tp: TP, offset: int) -> int | None:
    """The offset of the first record at or after `offset` in `tp` (markers have none)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await reader.start()
    try:
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
    """A FoldConsumer bound to one app's `Processed` (set as the transport's Consumer)."""
    attrs = {"processed": processed, "bootstrap": bootstrap, "__module__": __name__}
    return type("FoldConsumer", (FoldConsumer,), attrs)
