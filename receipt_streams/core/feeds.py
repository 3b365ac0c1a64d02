"""Two output feeds of the fold, as pure rules: read positions and receipt history.

**Read positions** (for notification counters and pushers): per local user, room and thread
slot (a thread root, `main`, or unthreaded), the further of the user's `m.read` and
`m.read.private` receipts. "Further" is the fold's own order (CONTRACT §4.2): the greater
event `stream_pos`. The merge needs no state of its own: both receipts are in the receipts
table. A position is emitted only when it moves, so the feed only ever moves forward and its
last value per key is the merged table. A receipt whose event position is unknown cannot be
placed and never counts (only remote receipts can lack one, and remote users are not in this
feed: their own server counts their notifications).

**History** (for analytics): one record per accepted change of the table, with the previous
receipt of the slot, the event's `origin_server_ts` when the fold knows the event, and the
time to read. `m.read.private` and `m.fully_read` stay out unless the operator opts in.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import orjson

from receipt_streams.core.receipts import Receipt, ReceiptKey

READ, PRIVATE, FULLY_READ = "m.read", "m.read.private", "m.fully_read"
MERGED_TYPES = (READ, PRIVATE)

ReceiptSource = Literal["client", "federation"]


class FeedOptions(NamedTuple):
    """Which feed records the fold emits (settings `feed_*` and `history_*`)."""

    read_positions: bool = True
    history: bool = True
    history_private: bool = False
    history_fully_read: bool = False


class PositionKey(NamedTuple):
    """A read-position slot: no thread (None) and `main` are different slots, as in the table."""

    room_id: str
    user_id: str
    thread_id: str | None

    def encode(self) -> bytes:
        return orjson.dumps([self.room_id, self.user_id, self.thread_id])

    @classmethod
    def of(cls, key: ReceiptKey) -> PositionKey:
        return cls(key.room_id, key.user_id, key.thread_id)


def merged_partner(key: ReceiptKey) -> ReceiptKey | None:
    """The table slot merged with `key` into one read position (m.read <-> m.read.private),
    or None when `key` is not a read receipt."""
    if key.receipt_type == READ:
        return ReceiptKey(key.room_id, key.user_id, PRIVATE, key.thread_id)
    if key.receipt_type == PRIVATE:
        return ReceiptKey(key.room_id, key.user_id, READ, key.thread_id)
    return None


def further(a: Receipt | None, b: Receipt | None) -> Receipt | None:
    """The further of two receipts by the fold's order (the greater event stream_pos); on a
    tie `a`, the one already there. A receipt without a position does not count."""
    if a is None or a.stream_pos is None:
        return b if b is not None and b.stream_pos is not None else None
    if b is None or b.stream_pos is None:
        return a
    return b if b.stream_pos > a.stream_pos else a


def position_move(
    previous: Receipt | None, incoming: Receipt, partner: Receipt | None
) -> Receipt | None:
    """The new read position when one merged slot goes from `previous` to `incoming`, its
    partner slot holding `partner`; None when the position does not move."""
    before = further(previous, partner)
    after = further(partner, incoming)  # on a tie the partner, already there
    if after is None or (before is not None and after.stream_pos <= before.stream_pos):
        return None
    return after


def position_value(key: PositionKey, position: Receipt) -> bytes:
    """The feed's value: where the user has read up to. Which receipt type put it there is
    left out (a private receipt's existence is its owner's business)."""
    return orjson.dumps(
        {
            "room_id": key.room_id,
            "user_id": key.user_id,
            "thread_id": key.thread_id,
            "event_id": position.event_id,
            "stream_pos": position.stream_pos,
            "ts": position.ts,
        }
    )


def in_history(receipt_type: str, options: FeedOptions) -> bool:
    if receipt_type == PRIVATE:
        return options.history_private
    if receipt_type == FULLY_READ:
        return options.history_fully_read
    return True


def history_value(
    key: ReceiptKey,
    previous: Receipt | None,
    incoming: Receipt,
    origin_server_ts: int | None,
    source: ReceiptSource,
) -> bytes:
    """One accepted change. `time_to_read_ms` is the receipt's `ts` less the event's
    `origin_server_ts` (null when the event is not known); both clocks are as reported, so a
    remote server's skew can make it negative."""
    return orjson.dumps(
        {
            "room_id": key.room_id,
            "user_id": key.user_id,
            "receipt_type": key.receipt_type,
            "thread_id": key.thread_id,
            "event_id": incoming.event_id,
            "stream_pos": incoming.stream_pos,
            "ts": incoming.ts,
            "previous_event_id": previous.event_id if previous else None,
            "previous_stream_pos": previous.stream_pos if previous else None,
            "previous_ts": previous.ts if previous else None,
            "origin_server_ts": origin_server_ts,
            "time_to_read_ms": (
                incoming.ts - origin_server_ts if origin_server_ts is not None else None
            ),
            "source": source,
        }
    )
