"""The receipts table's key and value, and their exact bytes on the changelog."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson


class ReceiptKey(NamedTuple):
    """One receipt slot: no thread (None) and "main" are different keys (CONTRACT §4.1)."""

    room_id: str
    user_id: str
    receipt_type: str
    thread_id: str | None

    def encode(self) -> bytes:
        return orjson.dumps([self.room_id, self.user_id, self.receipt_type, self.thread_id])

    @classmethod
    def decode(cls, raw: bytes) -> ReceiptKey:
        room_id, user_id, receipt_type, thread_id = orjson.loads(raw)
        return cls(room_id, user_id, receipt_type, thread_id)


class Receipt(NamedTuple):
    """The latest receipt in a slot. `stream_pos` is None while the event is unknown."""

    event_id: str
    stream_pos: int | None
    ts: int
    data: Mapping[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "stream_pos": self.stream_pos,
                "ts": self.ts,
                "data": self.data,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Receipt:
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Receipt:
        """From the object `encode` writes, already parsed (e.g. inside a larger array)."""
        return cls(d["event_id"], d.get("stream_pos"), d["ts"], d["data"])


def client_data(ts: int, thread_id: str | None) -> dict[str, Any]:
    """What a local receipt shows to clients: `ts`, and `thread_id` when threaded."""
    return {"ts": ts} if thread_id is None else {"ts": ts, "thread_id": thread_id}
