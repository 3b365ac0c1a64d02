"""A Processor over dict stores, driven the way the Faust agent drives it (not a test module).

`Harness` builds input records with orjson-encoded payloads keyed by room_id, numbers their
offsets per topic, carries out effects like the agent (held-store writes after the "flush"),
and records the receipts table's changelog so that deltas can be planned from it.
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any

import orjson

from receipt_streams.adapters.effects import Output, Router, Tally
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.processor import (
    Effect,
    Folded,
    Limits,
    Processor,
    SendDlq,
)
from receipt_streams.core.receipts import Receipt, ReceiptKey

CLIENT, MEMBERSHIP, EVENTS = "receipts.client.v1", "rooms.membership.v1", "rooms.events.v1"
ROOM = "!r:hs1"
T0 = 1_700_000_000_000


class ChangelogStore(dict):
    """A dict store that also keeps its write log `(offset, key, value)`, like a changelog."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, bytes, bytes | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.log.append((len(self.log), key, value))

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self.log.append((len(self.log), key, None))


class Harness:
    def __init__(self, limits: Limits | None = None, partition: int = 0) -> None:
        self.receipts = ChangelogStore()
        self.state: dict[bytes, bytes] = {}
        self.held: dict[bytes, bytes] = {}
        self.processor = Processor(self.receipts, self.state, self.held, limits or Limits())
        # The engines' own topic -> handler table and effect carrier.
        self.topics = Settings(
            topic_client=CLIENT, topic_membership=MEMBERSHIP, topic_events=EVENTS
        )
        self.outputs: list[Output] = []  # the records the effects asked for, in order
        self.partition = partition
        self.offsets: dict[str, int] = {}
        self.pos = 0
        self.now = T0
        self.effects: list[Effect] = []

    # --- records -----------------------------------------------------------------------

    def source(self, topic: str, value: bytes | None, key: bytes | None) -> Source:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return Source(topic, self.partition, offset, key, value)

    def next_pos(self) -> int:
        self.pos += 1
        return self.pos

    @property
    def router(self) -> Router:
        """Built over the current processor (tests may swap it for a crashing one)."""
        return Router(self.processor, self.topics)

    def feed(self, src: Source) -> list[Effect]:
        # Unguarded (tests inject crashes); the same table of handlers as the engines.
        return self.carry_out(self.router.handlers[src.topic](src, self.now))

    def carry_out(self, effects: list[Effect]) -> list[Effect]:
        """As the batch engine does: records out, held receipts forgotten at once."""
        for removal in self.router.carry_out(effects, "client", self.outputs, Tally()):
            self.processor.held.remove(removal.key, removal.records)
        self.effects += effects
        return effects

    def send(
        self,
        topic: str,
        value: dict[str, Any] | bytes | None,
        key: bytes | str | EllipsisType | None = ...,
    ) -> list[Effect]:
        """Send one record; the key defaults to the payload's room_id (or ROOM)."""
        raw = orjson.dumps(value) if isinstance(value, dict) else value
        if key is ...:
            room = value.get("room_id", ROOM) if isinstance(value, dict) else ROOM
            key = room.encode()
        elif isinstance(key, str):
            key = key.encode()
        return self.feed(self.source(topic, raw, key))

    def member(
        self, user: str, membership: str = "join", *, room: str = ROOM, pos: int | None = None
    ) -> list[Effect]:
        return self.send(
            MEMBERSHIP,
            {
                "room_id": room,
                "user_id": user,
                "membership": membership,
                "stream_pos": self.next_pos() if pos is None else pos,
            },
        )

    def event(
        self,
        event_id: str,
        *,
        rel: tuple[str, str] | None = None,
        room: str = ROOM,
        sender: str = "@a:hs1",
        pos: int | None = None,
    ) -> list[Effect]:
        value: dict[str, Any] = {
            "room_id": room,
            "event_id": event_id,
            "sender": sender,
            "stream_pos": self.next_pos() if pos is None else pos,
            "origin_server_ts": self.now,
        }
        if rel is not None:
            value["relates_to"] = {"rel_type": rel[0], "event_id": rel[1]}
        return self.send(EVENTS, value)

    def receipt_value(
        self,
        user: str,
        receipt_type: str,
        event_id: str,
        *,
        thread_id: str | None = None,
        ts: int | None = None,
        room: str = ROOM,
    ) -> dict[str, Any]:
        value: dict[str, Any] = {
            "room_id": room,
            "user_id": user,
            "receipt_type": receipt_type,
            "event_id": event_id,
            "ts": self.now if ts is None else ts,
        }
        if thread_id is not None:
            value["thread_id"] = thread_id
        return value

    def receipt(self, user: str, receipt_type: str, event_id: str, **kw: Any) -> list[Effect]:
        return self.send(CLIENT, self.receipt_value(user, receipt_type, event_id, **kw))

    def tick(self, now: int | None = None) -> list[Effect]:
        if now is not None:
            self.now = now
        return self.carry_out(self.processor.tick(self.partition, self.now))

    # --- views -------------------------------------------------------------------------

    def table(self) -> dict[ReceiptKey, Receipt]:
        return dict(self.processor.receipts.items())

    def slot(
        self,
        user: str,
        receipt_type: str = "m.read",
        thread_id: str | None = None,
        room: str = ROOM,
    ) -> Receipt | None:
        return self.processor.receipts.get(ReceiptKey(room, user, receipt_type, thread_id))

    def held_entries(self) -> dict[bytes, list[dict[str, Any]]]:
        return dict(self.processor.held.items())


def dlqs(effects: list[Effect]) -> list[SendDlq]:
    return [e for e in effects if isinstance(e, SendDlq)]


def dlq_reasons(effects: list[Effect]) -> list[str]:
    return [str(e.reason) for e in dlqs(effects)]


def folded(effects: list[Effect]) -> list[Folded]:
    return [e for e in effects if isinstance(e, Folded)]


def decoded(e: SendDlq) -> dict[str, Any]:
    return orjson.loads(e.record)
