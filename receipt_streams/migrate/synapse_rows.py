"""Synapse rows -> input records (CONTRACT.md §2), pure: no database, no Kafka.

Local users' receipts become client receipt records (what the HTTP API would have written);
remote users' receipts become inbound federation EDUs grouped by origin (what their server
would have sent). Membership and events become the records the fold needs to accept them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from receipt_streams.core.ids import server_of

LOCAL_TYPES = {
    "m.read": "m.read",
    "m.read.private": "m.read.private",
    "org.matrix.msc2285.read.private": "m.read.private",  # before the spec named it
}


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    """One row of Synapse's `receipts_linearized` (one receipt per room, type, user, thread)."""

    stream_id: int
    room_id: str
    receipt_type: str
    user_id: str
    event_id: str
    thread_id: str | None
    data: str | None
    event_stream_ordering: int | None = None


@dataclass(frozen=True, slots=True)
class Record:
    kind: str  # "client", "federation", "membership" or "events": a topic of Settings
    key: str
    value: dict[str, Any]


@dataclass
class Mapped:
    records: list[Record] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _data(row: ReceiptRow) -> dict[str, Any] | None:
    try:
        data = orjson.loads(row.data or "{}")
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def map_receipts(
    rows: Iterable[ReceiptRow],
    server_name: str,
    received_ts: int,
    joined: dict[str, set[str]] | None = None,
    edu_entries: int = 100,
) -> Mapped:
    """Client records for local users, EDUs (at most `edu_entries` entries each) for remote
    ones. With `joined` (room -> joined user IDs), receipts the fold would refuse are skipped
    and counted: a local user no longer joined, a remote server with nobody left in the room."""
    out = Mapped()
    edus: dict[str, list[dict[str, Any]]] = {}  # origin -> EDU contents
    sizes: Counter[int] = Counter()
    for row in rows:
        data = _data(row)
        server = server_of(row.user_id)
        if data is None or not isinstance(data.get("ts"), int) or not server:
            out.skipped["bad_row"] += 1
            continue
        room_joined = None if joined is None else joined.get(row.room_id, set())
        if server == server_name:
            receipt_type = LOCAL_TYPES.get(row.receipt_type)
            if receipt_type is None:
                out.skipped["receipt_type"] += 1
                continue
            if room_joined is not None and row.user_id not in room_joined:
                out.skipped["not_joined"] += 1
                continue
            value: dict[str, Any] = {
                "room_id": row.room_id,
                "user_id": row.user_id,
                "receipt_type": receipt_type,
                "event_id": row.event_id,
                "ts": data["ts"],
            }
            if row.thread_id is not None:
                value["thread_id"] = row.thread_id
            out.records.append(Record("client", row.room_id, value))
            continue
        if row.receipt_type != "m.read":  # the only type federation carries
            out.skipped["receipt_type"] += 1
            continue
        if room_joined is not None and not any(server_of(u) == server for u in room_joined):
            out.skipped["origin_not_in_room"] += 1
            continue
        entry_data = {k: v for k, v in data.items() if k != "thread_id"}
        if row.thread_id is not None:
            entry_data["thread_id"] = row.thread_id
        entry = {"event_ids": [row.event_id], "data": entry_data}
        contents = edus.setdefault(server, [])
        # One entry per (room, user) in an EDU: a user's receipts in two threads go apart.
        for content in contents:
            if sizes[id(content)] < edu_entries and row.user_id not in content.get(
                row.room_id, {}
            ).get("m.read", {}):
                break
        else:
            content = {}
            contents.append(content)
        content.setdefault(row.room_id, {}).setdefault("m.read", {})[row.user_id] = entry
        sizes[id(content)] += 1
    for origin, contents in edus.items():
        for content in contents:
            value = {
                "origin": origin,
                "received_ts": received_ts,
                "edu": {"edu_type": "m.receipt", "content": content},
            }
            out.records.append(Record("federation", origin, value))
    return out


def membership_record(room_id: str, user_id: str, membership: str, stream_pos: int) -> Record:
    value = {
        "room_id": room_id,
        "user_id": user_id,
        "membership": membership,
        "stream_pos": stream_pos,
    }
    return Record("membership", room_id, value)


def event_record(
    room_id: str,
    event_id: str,
    sender: str,
    stream_pos: int,
    origin_server_ts: int,
    relation: tuple[str, str] | None = None,
) -> Record:
    """`relation` is (rel_type, parent event ID) from Synapse's `event_relations`."""
    value: dict[str, Any] = {
        "room_id": room_id,
        "event_id": event_id,
        "sender": sender,
        "stream_pos": stream_pos,
        "origin_server_ts": origin_server_ts,
    }
    if relation is not None:
        value["relates_to"] = {"rel_type": relation[0], "event_id": relation[1]}
    return Record("events", room_id, value)
