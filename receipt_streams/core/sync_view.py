"""The receipts part of `/sync`, built from the table's changelog and the membership view.

Each slot keeps its latest receipt and the changelog offset that wrote it, so "the changes
since a token" is exactly "each changed slot's latest state". Tokens are vectors of changelog
offsets: durable, so a token from before any restart still works, and compaction never drops
what a token still needs (it keeps each key's latest record).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from receipt_streams.core.deltas import build_delta
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
    rooms: dict[str, dict[ReceiptKey, _Slot]] = field(default_factory=dict)
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
        slots.pop(key, None)  # re-inserted last: a room's slots stay in changelog order
        if value is not None:
            slots[key] = _Slot(partition, offset, value)
        elif not slots:
            del self.rooms[key.room_id]  # a purged room leaves nothing behind
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

    def room_receipts(self, room_id: str) -> list[tuple[ReceiptKey, Receipt]]:
        return [(k, s.receipt) for k, s in self.rooms.get(room_id, {}).items()]

    def sync(self, user_id: str, since: Token | None) -> dict[str, Any]:
        """The `rooms.join` part of a /sync response for `user_id` (empty rooms left out)."""
        if since is not None and (
            len(since.receipts) != self.receipt_partitions
            or len(since.members) != self.member_partitions
        ):
            raise BadToken("token is for another partition layout")
        joined: dict[str, Any] = {}
        for room_id in self.joined_rooms(user_id):
            _, m_part, m_offset = self.memberships[user_id][room_id]
            newly_joined = since is None or m_offset >= since.members[m_part]
            slots = self.rooms.get(room_id, {})
            if since is None or newly_joined:
                changes = [(k, slot.receipt) for k, slot in slots.items()]
            else:
                changes = self._since(slots, since)
            room = render_for_user(room_id, user_id, changes)
            if room:
                joined[room_id] = room
        return joined


def render_for_user(
    room_id: str, user_id: str, changes: Iterable[tuple[ReceiptKey, Receipt]]
) -> dict[str, Any]:
    """One room's `ephemeral` (a single m.receipt: everyone's public receipts plus the user's
    own private ones) and `account_data` (the user's m.fully_read); empty parts left out."""
    mine = [(k, v) for k, v in changes if k.receipt_type == "m.read" or k.user_id == user_id]
    delta = build_delta(room_id, 0, 0, mine)
    if delta is None:
        return {}
    content: dict[str, Any] = {}
    for part in (delta.get("receipt"), (delta.get("private") or {}).get(user_id)):
        for event_id, by_type in (part or {}).get("content", {}).items():
            for receipt_type, users in by_type.items():
                content.setdefault(event_id, {}).setdefault(receipt_type, {}).update(users)
    out: dict[str, Any] = {}
    if content:
        out["ephemeral"] = {"events": [{"type": "m.receipt", "content": content}]}
    fully_read = (delta.get("account_data") or {}).get(user_id)
    if fully_read:
        out["account_data"] = {"events": [fully_read]}
    return out
