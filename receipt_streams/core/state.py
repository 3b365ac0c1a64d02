"""Typed access to the table stores (plain mappings of bytes to bytes).

Room state (membership, server counts, the event index) lives in one store, so one changelog:
after a crash that store is a prefix of its write sequence; `membership.py` relies on that.
Keys are JSON arrays led by the room, values JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import orjson

from receipt_streams.core.membership import MemberState, RoomServers
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.threads import EventInfo

Store = MutableMapping[bytes, bytes]


def _key(*parts: str) -> bytes:
    return orjson.dumps(parts)


def _prefix(*parts: str) -> bytes:
    """What every key whose array starts with `parts` (and goes on) starts with."""
    return orjson.dumps(parts)[:-1] + b","


def keys_with_prefix(store: Store, prefix: bytes) -> list[bytes]:
    """The keys of `store` that start with `prefix`: a RocksDB seek where the store offers
    one (`prefix_keys`: the batch engine's stores and overlays), else a scan (dicts, Faust
    tables)."""
    seek = getattr(store, "prefix_keys", None)
    if seek is not None:
        return list(seek(prefix))
    return [key for key in list(store.keys()) if key.startswith(prefix)]


class RoomState:
    def __init__(self, store: Store) -> None:
        self.store = store

    def member(self, room_id: str, user_id: str) -> MemberState | None:
        raw = self.store.get(_key("m", room_id, user_id))
        if raw is None:
            return None
        d = orjson.loads(raw)
        return MemberState(d["membership"], d["stream_pos"])

    def put_member(self, room_id: str, user_id: str, m: MemberState) -> None:
        self.store[_key("m", room_id, user_id)] = orjson.dumps(
            {"membership": m.membership, "stream_pos": m.stream_pos}
        )

    def servers(self, room_id: str) -> RoomServers | None:
        raw = self.store.get(_key("s", room_id))
        if raw is None:
            return None
        d = orjson.loads(raw)
        return RoomServers(d["counts"], tuple(d["last"]) if d["last"] else None)

    def put_servers(self, room_id: str, s: RoomServers) -> None:
        self.store[_key("s", room_id)] = orjson.dumps({"counts": s.counts, "last": s.last})

    def room_keys(self, room_id: str) -> list[bytes]:
        """Every key of the room: its members, its server counts, its event index."""
        keys = keys_with_prefix(self.store, _prefix("m", room_id))
        if self.store.get(servers := _key("s", room_id)) is not None:
            keys.append(servers)
        return keys + keys_with_prefix(self.store, _prefix("e", room_id))

    def event(self, room_id: str, event_id: str) -> EventInfo | None:
        raw = self.store.get(_key("e", room_id, event_id))
        if raw is None:
            return None
        d = orjson.loads(raw)
        return EventInfo(
            d["stream_pos"], d["sender"], d.get("rel_type"), d.get("parent"), d.get("ts")
        )

    def put_event(self, room_id: str, event_id: str, e: EventInfo) -> None:
        self.store[_key("e", room_id, event_id)] = orjson.dumps(
            {
                "stream_pos": e.stream_pos,
                "sender": e.sender,
                "rel_type": e.rel_type,
                "parent": e.parent,
                "ts": e.origin_server_ts,
            }
        )


class HeldTable:
    """Receipts waiting for their event or join, per (room, what, dep); kept apart from the
    room state so that the grace-period sweep scans only these few entries.

    Each list is bounded in bytes by the processor, and so is each partition's total: it is
    counted here per partition (the entries say their partition: one store may serve all of
    them), from a scan of the store the first time it is asked for, then kept up to date by
    every write, and counted afresh by every sweep of the partition (`items(partition)`), so
    that it follows the store through restores and rebalances.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._bytes: dict[int, int] = {}

    @staticmethod
    def key(room_id: str, waiting_for: str, dep: str) -> bytes:
        return _key(room_id, waiting_for, dep)

    @staticmethod
    def encode(entries: list[dict[str, Any]]) -> bytes:
        return orjson.dumps(entries)

    def get(self, key: bytes) -> list[dict[str, Any]]:
        raw = self.store.get(key)
        return orjson.loads(raw) if raw is not None else []

    def size(self, key: bytes) -> int:
        """Bytes of one held list as stored (and on the changelog)."""
        raw = self.store.get(key)
        return len(raw) if raw is not None else 0

    def partition_bytes(self, partition: int) -> int:
        """Bytes of all held lists of `partition`."""
        if partition not in self._bytes:
            self._bytes[partition] = sum(
                len(raw)
                for _, raw in self.store.items()
                if orjson.loads(raw)[0]["partition"] == partition
            )
        return self._bytes[partition]

    def _adjust(self, partition: int, delta: int) -> None:
        if partition in self._bytes:  # else the next scan counts it
            self._bytes[partition] += delta

    def put(self, key: bytes, entries: list[dict[str, Any]]) -> None:
        self.put_raw(key, self.encode(entries), entries[0]["partition"])

    def put_raw(self, key: bytes, raw: bytes, partition: int) -> None:
        old = self.size(key)
        self.store[key] = raw
        self._adjust(partition, len(raw) - old)

    def remove(self, key: bytes, records: frozenset[tuple[str, int, int]]) -> None:
        """Drop the named records (topic, partition, offset) from a list; an emptied list is
        deleted."""
        entries = self.get(key)
        if not entries:
            return
        keep = [e for e in entries if (e["topic"], e["partition"], e["offset"]) not in records]
        if len(keep) == len(entries):
            return
        if keep:
            self.put(key, keep)
        else:
            self._adjust(entries[0]["partition"], -self.size(key))
            del self.store[key]

    def room_keys(self, room_id: str) -> list[bytes]:
        return keys_with_prefix(self.store, _prefix(room_id))

    def items(self, partition: int | None = None) -> Iterator[tuple[bytes, list[dict[str, Any]]]]:
        """Every held list; with `partition`, a full pass also counts that partition's bytes."""
        total = 0
        for key, raw in list(self.store.items()):
            entries = orjson.loads(raw)
            if entries and entries[0]["partition"] == partition:
                total += len(raw)
            yield key, entries
        if partition is not None:
            self._bytes[partition] = total


class ReceiptsTable:
    """The receipts table: ReceiptKey -> Receipt, as bytes exactly as on the changelog."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: ReceiptKey) -> Receipt | None:
        raw = self.store.get(key.encode())
        return Receipt.decode(raw) if raw is not None else None

    def put(self, key: ReceiptKey, value: Receipt) -> None:
        self.store[key.encode()] = value.encode()

    def delete(self, raw_key: bytes) -> None:
        """Remove a slot: a tombstone (null value) on the changelog."""
        del self.store[raw_key]

    def room_keys(self, room_id: str) -> list[bytes]:
        """The room's slots (encoded keys): one seek, keys are led by the room."""
        return keys_with_prefix(self.store, _prefix(room_id))

    def user_keys(self, user_id: str) -> Iterator[bytes]:
        """The user's slots in every room of this store: one pass over its keys (the user
        is the key's second element, so no seek finds them). Lazy, so that memory holds the
        matches only: consume it before writing to the store."""
        needle = orjson.dumps(user_id)
        for raw in self.store.keys():  # noqa: SIM118 (an Overlay reads no values here)
            if needle in raw and ReceiptKey.decode(raw).user_id == user_id:
                yield raw

    def items(self) -> Iterator[tuple[ReceiptKey, Receipt]]:
        for k, v in list(self.store.items()):
            yield ReceiptKey.decode(k), Receipt.decode(v)
