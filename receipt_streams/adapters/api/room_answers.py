"""Answers of the read store's per-room `/sync` queries, kept until their room is written.

Many requests ask the same room the same thing: when a receipt lands in a big room, every
member's `/sync` wakes with much the same `since` and asks for the room's changes since it.
Decoding those receipts from RocksDB was most of such a request's time. Synapse caches the
same reads (`_get_linearized_receipts_for_room`, keyed by room and stream range) for the
same reason. Sliding sync's queries (the receipts on a timeline's events, a user's own) are
not kept: spread over many rooms, they churned the kept answers and cost more than they saved.

An answer is dropped when its room is written (the store calls `forget` as it commits a
batch), so a kept answer is exactly what the store would give as of its token. The least
recently used answers go first once the receipts held pass `max_receipts`: memory stays
bounded whatever the number of rooms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sized
from typing import Any

from receipt_streams.adapters.metrics import READ_STORE_ANSWERS, READ_STORE_ANSWERS_HELD

_KEPT = READ_STORE_ANSWERS.labels("kept")
_READ = READ_STORE_ANSWERS.labels("read")


class RoomAnswers:
    def __init__(self, max_receipts: int) -> None:
        self.max_receipts = max_receipts
        self.held = 0  # receipts (or list items) in the kept answers, plus one per answer
        self._answers: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._of_room: dict[str, set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, room_id: str, query: Hashable) -> Any | None:
        answer = self._answers.get((room_id, query))
        if answer is None:
            _READ.inc()
            return None
        _KEPT.inc()
        self._answers.move_to_end((room_id, query))
        return answer

    def put(self, room_id: str, query: Hashable, answer: Sized) -> None:
        """Keep `answer` (never mutated afterwards by the store or its callers)."""
        if self.max_receipts <= 0 or len(answer) + 1 > self.max_receipts:
            return
        self._drop((room_id, query))
        self._answers[(room_id, query)] = answer
        self._of_room.setdefault(room_id, set()).add(query)
        self.held += len(answer) + 1
        while self.held > self.max_receipts:
            (room, oldest), dropped = self._answers.popitem(last=False)
            self.held -= len(dropped) + 1
            self._unindex(room, oldest)
        READ_STORE_ANSWERS_HELD.set(self.held)

    def forget(self, room_ids: Iterable[str]) -> None:
        """The rooms were written: their answers no longer hold."""
        for room_id in room_ids:
            for query in self._of_room.pop(room_id, ()):
                answer = self._answers.pop((room_id, query))
                self.held -= len(answer) + 1
        READ_STORE_ANSWERS_HELD.set(self.held)

    def _drop(self, key: tuple[str, Hashable]) -> None:
        answer = self._answers.pop(key, None)
        if answer is not None:
            self.held -= len(answer) + 1
            self._unindex(*key)

    def _unindex(self, room_id: str, query: Hashable) -> None:
        queries = self._of_room.get(room_id)
        if queries is not None:
            queries.discard(query)
            if not queries:
                del self._of_room[room_id]
