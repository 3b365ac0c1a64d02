"""Builders for input records, and the sentinel technique for exact delta assertions.

Each step sends its records followed by a sentinel receipt (a user moving forward on an event
of its own). A room lives on one partition and is folded in order, so every delta the step
caused comes before, or together with, the sentinel's: "this step emitted nothing" is proven by
ordering, without sleeping.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.support.worker import TopicReader

SENTINEL = "@sentinel:hs1"


class Room:
    def __init__(self, settings: Any, room_id: str) -> None:
        self.s, self.room_id = settings, room_id
        self.pos = 0
        self.sentinels = 0

    def _next(self) -> int:
        self.pos += 1
        return self.pos

    def key(self) -> bytes:
        return self.room_id.encode()

    def member(self, user: str, membership: str = "join") -> tuple[str, bytes, dict]:
        return (
            self.s.topic_membership,
            self.key(),
            {
                "room_id": self.room_id,
                "user_id": user,
                "membership": membership,
                "stream_pos": self._next(),
            },
        )

    def event(
        self, event_id: str, sender: str = "@a:hs1", relates_to: tuple[str, str] | None = None
    ) -> tuple[str, bytes, dict]:
        value: dict[str, Any] = {
            "room_id": self.room_id,
            "event_id": event_id,
            "sender": sender,
            "stream_pos": self._next(),
            "origin_server_ts": 1_700_000_000_000 + self.pos,
        }
        if relates_to:
            value["relates_to"] = {"rel_type": relates_to[0], "event_id": relates_to[1]}
        return (self.s.topic_events, self.key(), value)

    def receipt(
        self, user: str, receipt_type: str, event_id: str, ts: int, thread_id: str | None = None
    ) -> tuple[str, bytes, dict]:
        value: dict[str, Any] = {
            "room_id": self.room_id,
            "user_id": user,
            "receipt_type": receipt_type,
            "event_id": event_id,
            "ts": ts,
        }
        if thread_id is not None:
            value["thread_id"] = thread_id
        return (self.s.topic_client, self.key(), value)

    def barrier(self) -> tuple[list[tuple[str, bytes, dict]], str]:
        """Records proving the room's earlier membership records are folded: a fresh gate user
        leaves (after them, on the same partition), then sends a receipt. That receipt is
        refused as not_joined only once the leave is folded (if it comes first it is held,
        and released into the same refusal by the leave)."""
        self.sentinels += 1
        gate = f"@gate{self.sentinels}:hs1"
        return [self.member(gate, "leave"), self.receipt(gate, "m.read", "$gate", 0)], gate

    def sentinel(self) -> tuple[list[tuple[str, bytes, dict]], str]:
        """Records for a fresh sentinel event and a receipt on it; returns them and its id."""
        self.sentinels += 1
        event_id = f"$sentinel{self.sentinels}"
        return [
            self.event(event_id),
            self.receipt(SENTINEL, "m.read", event_id, self.sentinels),
        ], event_id


async def pass_barrier(bootstrap: str, room: Room, dlq_topic: str) -> None:
    """Send a membership barrier and wait until the DLQ shows it was folded."""
    from tests.support.worker import produce

    records, gate = room.barrier()
    await produce(bootstrap, records)
    async with TopicReader(bootstrap, dlq_topic) as dlq:
        await dlq.wait_for(
            lambda r: any(gate in (m.value or b"").decode("utf-8", "replace") for m in r),
            what=f"barrier {gate}",
        )


def without_barriers(dlq_values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DLQ records other than the membership barriers' own refusals."""
    return [v for v in dlq_values if '"@gate' not in (v.get("value") or "")]


def strip_sentinel(delta: dict[str, Any]) -> dict[str, Any]:
    """The delta's parts without the sentinel's entries (and without empty leftovers)."""
    out: dict[str, Any] = {}
    content = {}
    for event_id, by_type in delta.get("receipt", {}).get("content", {}).items():
        kept = {
            t: {u: d for u, d in users.items() if u != SENTINEL} for t, users in by_type.items()
        }
        kept = {t: users for t, users in kept.items() if users}
        if kept:
            content[event_id] = kept
    if content:
        out["receipt"] = {"type": "m.receipt", "content": content}
    for part in ("private", "account_data"):
        if delta.get(part):
            out[part] = delta[part]
    return out


async def deltas_until_sentinel(
    reader: TopicReader, start: int, sentinel_event: str, timeout: float = 30
) -> tuple[list[dict], int]:
    """Deltas from index `start` up to the one carrying the sentinel's receipt."""

    def has_sentinel(records: list[Any]) -> bool:
        return any(
            sentinel_event in v.get("receipt", {}).get("content", {})
            for v in _values(records[start:])
        )

    await reader.wait_for(has_sentinel, timeout, f"sentinel {sentinel_event}")
    values = _values(reader.records)
    end = next(
        i
        for i in range(start, len(values))
        if sentinel_event in values[i].get("receipt", {}).get("content", {})
    )
    return values[start : end + 1], end + 1


def _values(records: list[Any]) -> list[dict]:
    return [orjson.loads(m.value) for m in records]


def merge_parts(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """Union of several deltas' parts (later entries win), sentinel removed."""
    merged: dict[str, Any] = {}
    for delta in deltas:
        part = strip_sentinel(delta)
        if "receipt" in part:
            content = merged.setdefault("receipt", {"type": "m.receipt", "content": {}})["content"]
            for event_id, by_type in part["receipt"]["content"].items():
                for t, users in by_type.items():
                    content.setdefault(event_id, {}).setdefault(t, {}).update(users)
        for name in ("private", "account_data"):
            if name in part:
                merged.setdefault(name, {}).update(part[name])
    return merged
