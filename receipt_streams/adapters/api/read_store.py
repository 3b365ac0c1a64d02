"""The API's view of the changelogs on disk (RocksDB): the same queries as the in-memory
`SyncIndex` (`ReceiptsView`), with memory bounded by RocksDB's (block cache and memtables,
`RocksMemory`) whatever the number of receipt keys, and a local copy a restarted process is
ready from: it records the changelog offsets it reached and reads only what came after.

One database, its keys led by a letter (IDs never hold a NUL, so NUL ends each part):

    S key                       -> partition, offset, receipt (the slot; key as on the changelog)
    P room \\0 partition offset  -> key length, key, receipt   (by room and position)
    E room \\0 event \\0 key      -> partition, offset, receipt (by event: the receipt is on it)
    U room \\0 user             -> [[partition, offset, type, thread, receipt], ...]
                                   (by user: all of the user's receipts in the room, one read)
    L room                      -> partition, offset    (the room's last write)
    M user \\0 room              -> partition, offset, membership
    V room                      -> [[stream_pos, event_id], ...] (the room's newest events)
    O r|m partition             -> next offset          (how far each changelog was read)

A batch of changelog records is written in one atomic RocksDB write together with the offsets
it reaches, so the store is always a prefix of the changelogs: a crash loses at most the batch
in progress, read again at the next start. Queries read only what was written (between
batches), so an answer is exactly as of `token()`.

The indexes carry the receipt itself, not only the key: a query is one range scan, not a scan
and then a point read per key (a `/sync` or sliding-sync answer spent most of its time in
those reads). A receipt is small; the three copies cost disk, not memory. A user's receipts in
a room are few (a type and thread each), so they are one value: a sliding-sync answer reads
them, the membership and the newest events of all its rooms in one multi-get, where they
cost a range scan (a seek) and two point reads per room.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, WriteBatch

from receipt_streams.adapters.api.room_answers import RoomAnswers
from receipt_streams.adapters.engine.stores import RocksMemory, open_rdict
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.sync_view import Changes, Token, UserRoom, sync_rooms

log = logging.getLogger(__name__)

_POS = struct.Struct(">HQ")  # partition, offset: sorts by offset within a partition
_KEY_LEN = struct.Struct(">H")
_NEXT = struct.Struct(">Q")
# receipts_on_events: entries stepped over before seeking instead.
_STEPS_BEFORE_SEEK = 16
# The key layout above; a copy written with another is rebuilt.
LAYOUT = 3
_META = b"#meta"
_WRITTEN = b"#written"  # wall-clock ms of the last batch
_UNSET = object()
_SLOT = itemgetter(1)


_BACKGROUND = (
    "rocksdb.num-running-compactions",
    "rocksdb.num-running-flushes",
    "rocksdb.compaction-pending",
    "rocksdb.mem-table-flush-pending",
)


def _room(prefix: bytes, room_id: str) -> bytes:
    return prefix + room_id.encode() + b"\0"


def _newest(raw: bytes | None, limit: int) -> list[str]:
    """The newest `limit` event IDs of a `V` value, oldest first."""
    if raw is None or limit <= 0:
        return []
    return [e for _, e in orjson.loads(raw)[-limit:]]


def _walk(it: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Entries from the iterator's position on, while their keys start with `prefix`."""
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()


class DiskView:
    """`ReceiptsView` on RocksDB. Feed it with `apply_*` then `commit()` per batch."""

    def __init__(
        self,
        path: Path,
        receipt_partitions: int,
        member_partitions: int,
        recent_events: int = 50,
        memory: RocksMemory | None = None,
        identity: dict[str, Any] | None = None,
        max_age_s: float | None = None,
        answers_receipts: int = 100_000,
    ) -> None:
        self._kwargs = {
            "identity": identity,
            "max_age_s": max_age_s,
            "answers_receipts": answers_receipts,
        }
        self.path = path
        self.receipt_partitions = receipt_partitions
        self.member_partitions = member_partitions
        self.recent_events = recent_events
        self.memory = memory or RocksMemory(32 * 2**20, 4 * 2**20)
        self._args = (path, receipt_partitions, member_partitions, recent_events, self.memory)
        meta = orjson.dumps(
            {
                **(identity or {}),
                "layout": LAYOUT,
                "receipt_partitions": receipt_partitions,
                "member_partitions": member_partitions,
                "recent_events": recent_events,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = open_rdict(path, self._options())
        self.closed = False
        written = self.db.get(_WRITTEN)
        stale = (
            max_age_s is not None
            and written is not None
            and time.time() - _NEXT.unpack(written)[0] / 1000 > max_age_s
        )
        if self.db.get(_META) not in (None, meta) or stale:
            # Another layout, other topics, or older than the changelog keeps tombstones for.
            log.info(
                "read store does not match its changelogs: rebuilding", extra={"path": str(path)}
            )
            self.db.close()
            shutil.rmtree(path, ignore_errors=True)
            self.db = open_rdict(path, self._options())
        self.db[_META] = meta
        self.receipt_next = [self._next(b"Or", p) for p in range(receipt_partitions)]
        self.member_next = [self._next(b"Om", p) for p in range(member_partitions)]
        self._pending: dict[bytes, bytes | None] = {}
        self._reader: Any = None  # the iterator of the committed state, made when first asked
        # /sync's answers per room, dropped as the batch that writes the room's receipts is
        # committed.
        self.answers = RoomAnswers(answers_receipts)
        self._written_rooms: set[str] = set()
        self._r_next = list(self.receipt_next)
        self._m_next = list(self.member_next)

    def _options(self) -> Options:
        """The process's RocksDB options, with no bloom filter in the last level (where
        most of the data is): the view's point reads are of keys that exist, and its range
        scans use no filter, so those filters could only compete with index and data blocks
        for the block cache."""
        options = self.memory.options()
        options.set_optimize_filters_for_hits(True)
        return options

    def _next(self, prefix: bytes, partition: int) -> int:
        raw = self.db.get(prefix + struct.pack(">H", partition))
        return _NEXT.unpack(raw)[0] if raw is not None else 0

    @property
    def empty(self) -> bool:
        return not any(self.receipt_next) and not any(self.member_next)

    def close(self) -> None:
        """Close RocksDB, waiting for its flushes and compactions: a process that exits with
        them still running can crash in RocksDB's teardown (SIGSEGV after a clean stop, seen
        once in CI after a flood). Idempotent."""
        self._reader = None  # an open iterator would keep the database open
        if not self.closed:
            self.closed = True
            self.db.close()

    def background_jobs(self) -> int:
        """RocksDB's flushes and compactions running, plus one for each kind pending."""
        return sum(self.db.property_int_value(name) or 0 for name in _BACKGROUND)

    def wipe(self) -> None:
        """Forget everything: the next feed reads the changelogs from their beginning."""
        self._reader = None
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.__init__(*self._args, **self._kwargs)  # type: ignore[misc]

    # --- feeding (a batch at a time) ----------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        value = self._pending.get(key, _UNSET)
        return self.db.get(key) if value is _UNSET else value  # type: ignore[return-value]

    def _put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def _delete(self, key: bytes) -> None:
        self._pending[key] = None

    def apply_receipt(
        self, partition: int, offset: int, key: ReceiptKey, value: Receipt | None
    ) -> None:
        raw_key = key.encode()
        room = key.room_id.encode() + b"\0"
        old = self._get(b"S" + raw_key)
        if old is not None:
            old_p, old_offset = _POS.unpack_from(old)
            old_event = orjson.loads(old[_POS.size :])["event_id"]
            self._delete(b"P" + room + _POS.pack(old_p, old_offset))
            self._delete(b"E" + room + old_event.encode() + b"\0" + raw_key)
        user_key = b"U" + room + key.user_id.encode()
        self._put(b"L" + key.room_id.encode(), _POS.pack(partition, offset))
        self._written_rooms.add(key.room_id)
        self._put_own(user_key, key, partition, offset, value)
        if value is None:
            self._delete(b"S" + raw_key)
        else:
            position = _POS.pack(partition, offset)
            encoded = value.encode()
            slot = position + encoded
            self._put(b"S" + raw_key, slot)
            self._put(b"P" + room + position, _KEY_LEN.pack(len(raw_key)) + raw_key + encoded)
            self._put(b"E" + room + value.event_id.encode() + b"\0" + raw_key, slot)
        self._r_next[partition] = max(self._r_next[partition], offset + 1)

    def _put_own(
        self, user_key: bytes, key: ReceiptKey, partition: int, offset: int, value: Receipt | None
    ) -> None:
        """The user's entry for this type and thread in the room's `U` value, replaced."""
        raw = self._get(user_key)
        own = orjson.loads(raw) if raw is not None else []
        own = [e for e in own if e[2] != key.receipt_type or e[3] != key.thread_id]
        if value is not None:
            own.append([partition, offset, key.receipt_type, key.thread_id, value._asdict()])
        if own:
            self._put(user_key, orjson.dumps(own))
        else:
            self._delete(user_key)

    def apply_membership(
        self, partition: int, offset: int, room_id: str, user_id: str, membership: str | None
    ) -> None:
        key = b"M" + user_id.encode() + b"\0" + room_id.encode()
        if membership is None:
            self._delete(key)
        else:
            self._put(key, _POS.pack(partition, offset) + membership.encode())
        self.skip_member_offset(partition, offset)

    def apply_event(
        self, partition: int, offset: int, room_id: str, event_id: str, stream_pos: int
    ) -> None:
        self.skip_member_offset(partition, offset)
        if self.recent_events <= 0:
            return
        key = b"V" + room_id.encode()
        raw = self._get(key)
        newest = [tuple(e) for e in orjson.loads(raw)] if raw is not None else []
        entry = (stream_pos, event_id)
        if any(e == event_id for _, e in newest):
            return
        if len(newest) >= self.recent_events and entry <= newest[0]:
            return
        newest = heapq.nlargest(self.recent_events, [*newest, entry])[::-1]
        self._put(key, orjson.dumps(newest))

    def skip_member_offset(self, partition: int, offset: int) -> None:
        self._m_next[partition] = max(self._m_next[partition], offset + 1)

    def rollback(self) -> None:
        """Drop the batch in progress (its records are read again)."""
        self._pending = {}
        self._written_rooms = set()
        self._r_next = list(self.receipt_next)
        self._m_next = list(self.member_next)

    def commit(self) -> None:
        """Write the batch and the offsets it reaches atomically; then answer from it."""
        if (
            not self._pending
            and self._r_next == self.receipt_next
            and self._m_next == self.member_next
        ):
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for prefix, nexts in ((b"Or", self._r_next), (b"Om", self._m_next)):
            for p, n in enumerate(nexts):
                batch.put(prefix + struct.pack(">H", p), _NEXT.pack(n))
        batch.put(_WRITTEN, _NEXT.pack(int(time.time() * 1000)))
        self.db.write(batch)
        self._reader = None  # it sees the state before this batch
        self.answers.forget(self._written_rooms)
        self._written_rooms = set()
        self._pending = {}
        self.receipt_next = list(self._r_next)
        self.member_next = list(self._m_next)

    # --- reading ---------------------------------------------------------------------------------

    def token(self) -> Token:
        return Token(tuple(self.receipt_next), tuple(self.member_next))

    def _iterator(self) -> Any:
        """The committed state's iterator, shared by the queries until the next commit
        replaces it: making one cost about as much as a short scan, and a sliding-sync answer
        made ten. Queries are synchronous, so none sees it moved by another; it pins the
        files of that state (an idle view may keep a compaction's inputs a while longer)."""
        if self._reader is None:
            self._reader = self.db.iter()
        return self._reader

    def _scan(self, prefix: bytes, start: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """Entries under `prefix` from `start`."""
        it = self._iterator()
        it.seek(start or prefix)
        return list(_walk(it, prefix))

    @staticmethod
    def _by_room(entries: Iterable[tuple[bytes, bytes]]) -> Changes:
        """Slots from `P` entries, which come in changelog order."""
        out = []
        for _, value in entries:
            end = _KEY_LEN.size + _KEY_LEN.unpack_from(value)[0]
            out.append((ReceiptKey.decode(value[_KEY_LEN.size : end]), Receipt.decode(value[end:])))
        return out

    @staticmethod
    def _in_order(found: list[tuple[bytes, bytes]]) -> Changes:
        """Slots from (key, slot value) pairs of the `E` index, in changelog order; decoded
        as one JSON array (a decode per key and per receipt cost more than the rest)."""
        found.sort(key=_SLOT)  # by the position that leads the slot (positions are unique)
        parts = [x for k, v in found for x in (k, v[_POS.size :])]
        flat = orjson.loads(b"[" + b",".join(parts) + b"]")
        keys, receipts = flat[0::2], flat[1::2]
        return list(zip(map(ReceiptKey._make, keys), map(Receipt.from_dict, receipts), strict=True))

    @staticmethod
    def _own(room_id: str, user_id: str, raw: bytes | None) -> Changes:
        """A user's receipts in a room from its `U` value, in changelog order."""
        if raw is None:
            return []
        return [
            (ReceiptKey(room_id, user_id, rtype, thread), Receipt.from_dict(r))
            for _, _, rtype, thread, r in sorted(orjson.loads(raw), key=lambda e: (e[0], e[1]))
        ]

    def member_entry(self, room_id: str, user_id: str) -> tuple[str, int, int] | None:
        raw = self.db.get(b"M" + user_id.encode() + b"\0" + room_id.encode())
        if raw is None:
            return None
        partition, offset = _POS.unpack_from(raw)
        return raw[_POS.size :].decode(), partition, offset

    def membership(self, room_id: str, user_id: str) -> str | None:
        entry = self.member_entry(room_id, user_id)
        return entry[0] if entry else None

    def joined_rooms(self, user_id: str) -> list[str]:
        prefix = b"M" + user_id.encode() + b"\0"
        return sorted(
            key[len(prefix) :].decode()
            for key, value in self._scan(prefix)
            if value[_POS.size :] == b"join"
        )

    def room_receipts(self, room_id: str) -> Changes:
        changes = self.answers.get(room_id, "all")
        if changes is None:
            changes = self._by_room(self._scan(_room(b"P", room_id)))
            self.answers.put(room_id, "all", changes)
        return changes

    def room_changes_since(self, room_id: str, since: Token) -> Changes:
        last = self.db.get(b"L" + room_id.encode())
        if last is None:
            return []
        partition, last_offset = _POS.unpack(last)
        start_offset = since.receipts[partition]
        if start_offset > last_offset:
            return []
        query = ("since", partition, start_offset)
        changes = self.answers.get(room_id, query)
        if changes is None:
            prefix = _room(b"P", room_id)
            changes = self._by_room(self._scan(prefix, prefix + _POS.pack(partition, start_offset)))
            self.answers.put(room_id, query, changes)
        return changes

    def rooms_changed_since(self, room_ids: Iterable[str], since: Token) -> set[str]:
        rooms = list(room_ids)
        lasts = self.db.get([b"L" + r.encode() for r in rooms]) if rooms else []
        changed = set()
        for room_id, last in zip(rooms, lasts, strict=True):
            if last is not None:
                partition, offset = _POS.unpack(last)
                if offset >= since.receipts[partition]:
                    changed.add(room_id)
        return changed

    def receipts_on_events(self, room_id: str, event_ids: Iterable[str]) -> Changes:
        """The events' prefixes are visited in key order, one iterator walking forward: a
        prefix a few entries ahead is reached by stepping (cheap), a farther one by a seek
        (tens of microseconds: a timeline of 20 events cost 20 of them). Not kept in
        `answers`: a client opening a room asks for its own timeline once, and under such
        requests spread over many rooms the kept answers churned and cost more than they
        saved."""
        found: list[tuple[bytes, bytes]] = []
        room = _room(b"E", room_id)
        prefixes = sorted(room + e.encode() + b"\0" for e in set(event_ids))
        if not prefixes:
            return []
        it = self._iterator()
        it.seek(prefixes[0])
        for prefix in prefixes:
            for _ in range(_STEPS_BEFORE_SEEK):
                if not it.valid() or it.key() >= prefix:
                    break
                it.next()
            else:
                if it.valid() and it.key() < prefix:
                    it.seek(prefix)
            found += [(key[len(prefix) :], value) for key, value in _walk(it, prefix)]
        return self._in_order(found)

    def user_receipts(self, room_id: str, user_id: str) -> Changes:
        return self._own(room_id, user_id, self.db.get(_room(b"U", room_id) + user_id.encode()))

    def latest_events(self, room_id: str, limit: int) -> list[str]:
        return _newest(self.db.get(b"V" + room_id.encode()), limit)

    def user_rooms(self, user_id: str, room_ids: Sequence[str], newest: int) -> list[UserRoom]:
        """One multi-get for every room: one call into RocksDB, where a query per room cost
        a call each (and the user's receipts a seek)."""
        user = user_id.encode()
        keys = []
        for room_id in room_ids:
            room = room_id.encode()
            keys += [b"M" + user + b"\0" + room, b"V" + room, b"U" + room + b"\0" + user]
        values = self.db.get(keys) if keys else []
        out = []
        for i, room_id in enumerate(room_ids):
            member, events, own = values[3 * i : 3 * i + 3]
            out.append(
                UserRoom(
                    member[_POS.size :].decode() if member is not None else None,
                    _newest(events, newest),
                    self._own(room_id, user_id, own),
                )
            )
        return out

    def sync(self, user_id: str, since: Token | None) -> dict[str, Any]:
        return sync_rooms(self, user_id, since)
