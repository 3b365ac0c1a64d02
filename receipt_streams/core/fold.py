"""The fold rule (CONTRACT §4.2): receipts never move backwards.

Pure and total: given the stored receipt of a slot and an incoming one, say whether the
incoming one replaces it. The same function serves client and remote receipts, live and replay.
"""

from __future__ import annotations

from enum import Enum

from receipt_streams.core.receipts import Receipt


class Outcome(Enum):
    APPLIED = "applied"  # the slot changes: write it (and its delta follows from the changelog)
    UNCHANGED = "unchanged"  # older or duplicate: nothing is written, nothing emitted
    # Exactly what is stored already: this very record was applied before a crash (or is a
    # byte-identical redelivery). Nothing to write, but idempotent side effects may be redone.
    REPLAYED = "replayed"


def fold(current: Receipt | None, incoming: Receipt) -> Outcome:
    if current is None:
        return Outcome.APPLIED
    if current == incoming:
        return Outcome.REPLAYED
    if current.event_id == incoming.event_id:
        return Outcome.UNCHANGED  # same event again: a receipt that changes nothing
    if current.stream_pos is not None and incoming.stream_pos is not None:
        return Outcome.APPLIED if incoming.stream_pos > current.stream_pos else Outcome.UNCHANGED
    return Outcome.APPLIED  # a position is unknown: the newer arrival wins
