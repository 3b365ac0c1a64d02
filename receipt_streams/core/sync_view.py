"""The receipts part of `/sync`, built from the table's changelog and the membership view.

Each slot keeps its latest receipt and the changelog offset that wrote it, so "the changes
since a token" is exactly "each changed slot's latest state". Tokens are vectors of changelog
offsets: durable, so a token from before any restart still works, and compaction never drops
what a token still needs (it keeps each key's latest record).
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from receipt_streams.core.deltas import seen_by
from receipt_streams.core.receipts import Receipt, ReceiptKey


class BadToken(ValueError):
    """A `since` token this service did not issue."""


@dataclass(frozen=True)
class Token:
    receipts: tuple[int, ...]  # next offset per receipts-changelog partition
    members: tuple[int, ...]  # next offset per room-state-changelog partition

    def encode(self) -> str:
        text = ",".join(map(str, self.receipts)) + ";" + ",".join(map(str, self.members))
        return "r" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, raw: str) -> Token:
        try:
            if not raw.startswith("r"):
                raise ValueError("unknown prefix")
            body = raw[1:] + "=" * (-len(raw[1:]) % 4)
            receipts, members = base64.urlsafe_b64decode(body).decode().split(";")
            return cls(_ints(receipts), _ints(members))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadToken(f"not a sync token: {raw!r}") from exc

    def reached(self, other: Token) -> bool:
        """Has a view at `self` read everything `other` covers (same layout, every offset at
        least as far)?"""
        return (
            len(self.receipts) == len(other.receipts)
            and len(self.members) == len(other.members)
            and all(a >= b for a, b in zip(self.receipts, other.receipts, strict=True))
            and all(a >= b for a, b in zip(self.members, other.members, strict=True))
        )


Changes = list[tuple[ReceiptKey, Receipt]]


class UserRoom(NamedTuple):
    """What the client form of sliding sync reads of a room for its user first."""

    membership: str | None
    newest_events: list[str]  # at most the limit asked, oldest first
    own: Changes  # the user's own receipts in the room (every type, every thread)


class ReceiptsView(Protocol):
    """The queries `/sync` and the sliding-sync receipts extension ask of the API's view of
    the changelogs; the in-memory `SyncIndex` and the on-disk store both answer them. Every
    answer is as of `token()`: nothing is applied between two calls of one request."""

    receipt_partitions: int
    member_partitions: int

    def token(self) -> Token: ...

    def membership(self, room_id: str, user_id: str) -> str | None: ...

    def joined_rooms(self, user_id: str) -> list[str]: ...

    def member_entry(self, room_id: str, user_id: str) -> tuple[str, int, int] | None:
        """(membership, room-state changelog partition, offset) of the user in the room."""
        ...

    def room_receipts(self, room_id: str) -> Changes: ...

    def room_changes_since(self, room_id: str, since: Token) -> Changes:
        """The room's slots written at or after `since` (latest state each, oldest first)."""
        ...

    def rooms_changed_since(self, room_ids: Iterable[str], since: Token) -> set[str]:
        """Which of `room_ids` had a write (a tombstone included) at or after `since`."""
        ...

    def receipts_on_events(self, room_id: str, event_ids: Iterable[str]) -> Changes:
        """Every current receipt of the room whose event is one of `event_ids`."""
        ...

    def user_receipts(self, room_id: str, user_id: str) -> Changes:
        """Every current receipt of `user_id` in the room (every type, every thread)."""
        ...

    def latest_events(self, room_id: str, limit: int) -> list[str]:
        """The room's newest events known (at most `limit`), oldest first."""
        ...

    def user_rooms(self, user_id: str, room_ids: Sequence[str], newest: int) -> list[UserRoom]:
        """Per room: `membership`, `latest_events(room, newest)` and `user_receipts`, read
        together."""
        ...

    def sync(self, user_id: str, since: Token | None) -> dict[str, Any]: ...


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in text.split(",")) if text else ()
    if any(v < 0 for v in values):
        raise ValueError("negative offset")
    return values


@dataclass
class _Slot:
    partition: int
    offset: int
    receipt: Receipt


@dataclass
class SyncIndex:
    """Everything `/sync` needs, fed from two changelogs in offset order per partition."""

    receipt_partitions: int
    member_partitions: int
    recent_events: int = 50  # newest events kept per room (the client form's timelines)
    rooms: dict[str, dict[ReceiptKey, _Slot]] = field(default_factory=dict)
    # room -> event -> the keys whose receipt is on it (a key leaves its old event on a move)
    by_event: dict[str, dict[str, set[ReceiptKey]]] = field(default_factory=dict)
    # room -> user -> the user's keys in the room
    by_user: dict[str, dict[str, set[ReceiptKey]]] = field(default_factory=dict)
    # room -> (partition, offset) of its last write, a tombstone included
    last_write: dict[str, tuple[int, int]] = field(default_factory=dict)
    # room -> its newest events as (stream_pos, event_id), ascending
    events: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # user -> room -> (membership, partition, offset)
    memberships: dict[str, dict[str, tuple[str, int, int]]] = field(default_factory=dict)
    receipt_next: list[int] = field(default_factory=list)
    member_next: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.receipt_next = [0] * self.receipt_partitions
        self.member_next = [0] * self.member_partitions

    # --- feeding ---------------------------------------------------------------------

    def apply_receipt(
        self, partition: int, offset: int, key: ReceiptKey, value: Receipt | None
    ) -> None:
        slots = self.rooms.setdefault(key.room_id, {})
        old = slots.pop(key, None)  # re-inserted last: a room's slots stay in changelog order
        if old is not None:
            on_event = self.by_event[key.room_id][old.receipt.event_id]
            on_event.discard(key)
            if not on_event:
                del self.by_event[key.room_id][old.receipt.event_id]
        users = self.by_user.setdefault(key.room_id, {})
        self.last_write[key.room_id] = (partition, offset)
        if value is not None:
            slots[key] = _Slot(partition, offset, value)
            by_event = self.by_event.setdefault(key.room_id, {})
            by_event.setdefault(value.event_id, set()).add(key)
            users.setdefault(key.user_id, set()).add(key)
        elif key.user_id in users:
            users[key.user_id].discard(key)
            if not users[key.user_id]:
                del users[key.user_id]
        if not slots:
            del self.rooms[key.room_id]  # a purged room leaves no slots behind
        self.receipt_next[partition] = max(self.receipt_next[partition], offset + 1)

    def apply_membership(
        self, partition: int, offset: int, room_id: str, user_id: str, membership: str | None
    ) -> None:
        rooms = self.memberships.setdefault(user_id, {})
        if membership is None:
            rooms.pop(room_id, None)
        else:
            rooms[room_id] = (membership, partition, offset)
        self.member_next[partition] = max(self.member_next[partition], offset + 1)

    def apply_event(
        self, partition: int, offset: int, room_id: str, event_id: str, stream_pos: int
    ) -> None:
        """An event of the room-state changelog's event index: kept while among the room's
        `recent_events` newest."""
        self.skip_member_offset(partition, offset)
        if self.recent_events <= 0:
            return
        newest = self.events.setdefault(room_id, [])
        entry = (stream_pos, event_id)
        if any(e == event_id for _, e in newest):
            return
        if len(newest) >= self.recent_events and entry <= newest[0]:
            return
        bisect.insort(newest, entry)
        if len(newest) > self.recent_events:
            del newest[0]

    def skip_member_offset(self, partition: int, offset: int) -> None:
        """A room-state record that is not a membership still moves the position."""
        self.member_next[partition] = max(self.member_next[partition], offset + 1)

    # --- reading ---------------------------------------------------------------------

    def membership(self, room_id: str, user_id: str) -> str | None:
        entry = self.memberships.get(user_id, {}).get(room_id)
        return entry[0] if entry else None

    def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(
            r for r, (m, _, _) in self.memberships.get(user_id, {}).items() if m == "join"
        )

    def token(self) -> Token:
        return Token(tuple(self.receipt_next), tuple(self.member_next))

    @staticmethod
    def _since(slots: dict[ReceiptKey, _Slot], since: Token) -> list[tuple[ReceiptKey, Receipt]]:
        """The slots written at or after the token, walking back from the newest: a room's
        records all come from one changelog partition, in offset order."""
        recent = []
        for key, slot in reversed(slots.items()):
            if slot.offset < since.receipts[slot.partition]:
                break
            recent.append((key, slot.receipt))
        return recent[::-1]

    def room_receipts(self, room_id: str) -> Changes:
        return [(k, s.receipt) for k, s in self.rooms.get(room_id, {}).items()]

    def room_changes_since(self, room_id: str, since: Token) -> Changes:
        return self._since(self.rooms.get(room_id, {}), since)

    def rooms_changed_since(self, room_ids: Iterable[str], since: Token) -> set[str]:
        changed = set()
        for room_id in room_ids:
            last = self.last_write.get(room_id)
            if last is not None and last[1] >= since.receipts[last[0]]:
                changed.add(room_id)
        return changed

    def receipts_on_events(self, room_id: str, event_ids: Iterable[str]) -> Changes:
        slots, on = self.rooms.get(room_id, {}), self.by_event.get(room_id, {})
        keys = {k for e in set(event_ids) for k in on.get(e, ())}
        return [(k, slots[k].receipt) for k in sorted(keys, key=lambda k: slots[k].offset)]

    def user_receipts(self, room_id: str, user_id: str) -> Changes:
        slots = self.rooms.get(room_id, {})
        keys = self.by_user.get(room_id, {}).get(user_id, ())
        return [(k, slots[k].receipt) for k in sorted(keys, key=lambda k: slots[k].offset)]

    def latest_events(self, room_id: str, limit: int) -> list[str]:
        newest = self.events.get(room_id, [])
        return [e for _, e in newest[-limit:]] if limit > 0 else []

    def member_entry(self, room_id: str, user_id: str) -> tuple[str, int, int] | None:
        return self.memberships.get(user_id, {}).get(room_id)

    def user_rooms(self, user_id: str, room_ids: Sequence[str], newest: int) -> list[UserRoom]:
        return [
            UserRoom(
                self.membership(r, user_id),
                self.latest_events(r, newest),
                self.user_receipts(r, user_id),
            )
            for r in room_ids
        ]

    def sync(self, user_id: str, since: Token | None) -> dict[str, Any]:
        return sync_rooms(self, user_id, since)

    def commit(self) -> None:
        """Everything applied is visible at once here (the on-disk view writes a batch)."""


def sync_rooms(view: ReceiptsView, user_id: str, since: Token | None) -> dict[str, Any]:
    """The `rooms.join` part of a /sync response for `user_id` (empty rooms left out)."""
    if since is not None and (
        len(since.receipts) != view.receipt_partitions
        or len(since.members) != view.member_partitions
    ):
        raise BadToken("token is for another partition layout")
    joined: dict[str, Any] = {}
    rooms = view.joined_rooms(user_id)
    # One look at every room's last write first: most rooms of a user are quiet.
    changed = view.rooms_changed_since(rooms, since) if since is not None else set(rooms)
    for room_id in rooms:
        entry = view.member_entry(room_id, user_id)
        assert entry is not None
        _, m_part, m_offset = entry
        if since is None or m_offset >= since.members[m_part]:  # newly joined: all of it
            changes = view.room_receipts(room_id)
        elif room_id in changed:
            changes = view.room_changes_since(room_id, since)
        else:
            continue
        room = render_for_user(room_id, user_id, changes)
        if room:
            joined[room_id] = room
    return joined


def render_for_user(
    room_id: str, user_id: str, changes: Iterable[tuple[ReceiptKey, Receipt]]
) -> dict[str, Any]:
    """One room's `ephemeral` (a single m.receipt: everyone's public receipts plus the user's
    own private ones) and `account_data` (the user's m.fully_read); empty parts left out."""
    content, fully_read = seen_by(room_id, user_id, changes)
    out: dict[str, Any] = {}
    if content:
        out["ephemeral"] = {"events": [{"type": "m.receipt", "content": content}]}
    if fully_read:
        out["account_data"] = {"events": [fully_read]}
    return out
