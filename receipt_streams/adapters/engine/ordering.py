"""Input synchronisation: one partition's topics are folded in timestamp order.

A receipt must not overtake the join or the event it depends on just because its topic was
fetched first: in a replay or a backlog it would be held, and past the grace period dropped.
As Kafka Streams does for a task, the records of a partition's topics are merged by
timestamp (ties to the topic assigned first), each topic partition keeping its own order,
and a partition waits (at most `max_idle_ms`) while one of its topics is known, or not yet
known, to have records on the broker that are not fetched yet. No Kafka imports: records
only need `timestamp` and `offset`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

Tp = tuple[str, int]  # topic, partition


class Record(Protocol):
    @property
    def timestamp(self) -> int: ...

    @property
    def offset(self) -> int: ...


class InputBuffers:
    def __init__(self, max_idle_ms: int) -> None:
        self.max_idle_ms = max_idle_ms
        self.inputs: dict[int, list[Tp]] = {}  # partition -> its assigned topic partitions
        self.buffers: dict[Tp, deque[Any]] = {}
        self.fetched: dict[Tp, int] = {}  # next offset to arrive from the consumer
        self.ends: dict[Tp, int] = {}  # the broker's end offset, as last seen
        self.blocked_since: dict[int, int] = {}

    def assign(self, tps: list[Tp]) -> None:
        self.inputs = {}
        self.blocked_since = {}  # a partition handed back after a rebalance waits afresh
        for tp in tps:
            self.inputs.setdefault(tp[1], []).append(tp)
            self.buffers.setdefault(tp, deque())
        for tp in set(self.buffers) - set(tps):
            self.drop(tp)

    def drop(self, tp: Tp) -> None:
        """Forget a revoked partition's buffered records: its next owner re-reads them."""
        self.buffers.pop(tp, None)
        self.fetched.pop(tp, None)
        self.ends.pop(tp, None)
        self.blocked_since.pop(tp[1], None)
        if tp in self.inputs.get(tp[1], []):
            self.inputs[tp[1]].remove(tp)

    def rewind(self) -> None:
        """Forget every buffered record and what was fetched: the consumer was sent back."""
        for buffer in self.buffers.values():
            buffer.clear()
        self.fetched.clear()
        self.ends.clear()
        self.blocked_since.clear()

    def add(self, tp: Tp, records: list[Any], end: int | None, position: int | None = None) -> None:
        """Fetched `records`; the broker's `end` offset and the consumer's `position` when
        known. The position counts what no record shows: past a transaction's commit marker
        (a topic written in transactions ends with one), the last record's offset + 1 stays
        short of the end, and the partition would seem to have more to come."""
        if tp not in self.buffers:
            return
        self.buffers[tp].extend(records)
        if records:
            self.fetched[tp] = max(records[-1].offset + 1, self.fetched.get(tp, 0))
        if position is not None:
            self.fetched[tp] = max(position, self.fetched.get(tp, 0))
        if end is not None:
            self.ends[tp] = end

    def buffered(self, tp: Tp) -> int:
        buf = self.buffers.get(tp)
        return len(buf) if buf is not None else 0

    def unknown(self) -> list[Tp]:
        """Assigned topic partitions whose position or end offset is not known yet."""
        return [tp for tp in self.buffers if tp not in self.ends or tp not in self.fetched]

    def bound(self, tp: Tp, position: int, end: int) -> None:
        """The consumer's position and the broker's end offset, from the consumer itself."""
        if tp in self.buffers:
            self.fetched.setdefault(tp, position)
            self.ends[tp] = max(end, self.ends.get(tp, end))

    def pending(self) -> bool:
        return any(self.buffers.values())

    def _may_have_more(self, tp: Tp) -> bool:
        end = self.ends.get(tp)
        fetched = self.fetched.get(tp)
        if end is None or fetched is None:
            return True  # nothing known yet: wait for the broker's answer
        return fetched < end

    def take(self, partition: int, now_ms: int, limit: int | None = None) -> list[Any]:
        """The records of `partition` that can be folded now, in merge order: at most
        `limit` of them (the rest stay buffered, in order, for the next call)."""
        tps = self.inputs.get(partition, [])
        buffers = [self.buffers[tp] for tp in tps]
        room = limit if limit is not None else float("inf")
        out: list[Any] = []
        rank = {id(b): i for i, b in enumerate(buffers)}  # ties go to the earlier topic

        def key(b: deque[Any]) -> tuple[int, int]:
            return b[0].timestamp, rank[id(b)]

        while len(out) < room and (nonempty := [b for b in buffers if b]):
            if len(nonempty) < len(buffers) and any(
                not self.buffers[tp] and self._may_have_more(tp) for tp in tps
            ):
                since = self.blocked_since.setdefault(partition, now_ms)
                if now_ms - since < self.max_idle_ms:
                    return out  # wait for the missing topic's records, or the idle limit
            else:
                self.blocked_since.pop(partition, None)
            if len(nonempty) == 1:
                only = nonempty[0]
                while only and len(out) < room:
                    out.append(only.popleft())
                continue
            # Take from the oldest head while it stays the oldest, then look again. Ties are
            # broken the same way every time, so where a batch is cut never changes the order.
            head = min(nonempty, key=key)
            other_ts, other_rank = key(min((b for b in nonempty if b is not head), key=key))
            last_ts = other_ts if rank[id(head)] < other_rank else other_ts - 1
            while head and head[0].timestamp <= last_ts and len(out) < room:
                out.append(head.popleft())
        if not any(buffers):
            self.blocked_since.pop(partition, None)
        return out
