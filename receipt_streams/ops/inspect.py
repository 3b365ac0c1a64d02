"""`ctl inspect`: the current receipts of a room, a user or an event, from the table (the
receipts changelog read whole, read_committed, the last value per key)."""

from __future__ import annotations

from typing import Any

import orjson

from receipt_streams.ops.output import table


def rows(
    entries: dict[bytes, bytes],
    room: str | None = None,
    user: str | None = None,
    event: str | None = None,
) -> list[dict[str, Any]]:
    """The table's entries matching every filter given, in (room, user, type, thread) order."""
    out = []
    for raw_key, raw_value in entries.items():
        room_id, user_id, receipt_type, thread_id = orjson.loads(raw_key)
        value = orjson.loads(raw_value)
        if room is not None and room_id != room:
            continue
        if user is not None and user_id != user:
            continue
        if event is not None and value.get("event_id") != event:
            continue
        out.append(
            {
                "room_id": room_id,
                "user_id": user_id,
                "receipt_type": receipt_type,
                "thread_id": thread_id,
                "event_id": value.get("event_id"),
                "stream_pos": value.get("stream_pos"),
                "ts": value.get("ts"),
                "data": value.get("data"),
            }
        )
    out.sort(key=lambda r: (r["room_id"], r["user_id"], r["receipt_type"], r["thread_id"] or ""))
    return out


COLUMNS = ("room_id", "user_id", "receipt_type", "thread_id", "event_id", "stream_pos", "ts")


def render(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no receipts match"
    return (
        table(list(COLUMNS), [[r[c] for c in COLUMNS] for r in found])
        + f"\n{len(found)} receipt(s)"
    )
