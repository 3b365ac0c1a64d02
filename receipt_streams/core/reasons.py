"""DLQ reason codes: the stable vocabulary operators alert and filter on."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    NOT_JSON = "not_json"  # bytes that are not a UTF-8 JSON object
    BAD_SHAPE = "bad_shape"  # JSON of the wrong shape or types
    BAD_ID = "bad_id"  # a room, user, event ID or server name that breaks the grammar
    BAD_RECEIPT_TYPE = "bad_receipt_type"  # not m.read / m.read.private / m.fully_read
    TOO_LARGE = "too_large"  # over the configured record size
    KEY_MISMATCH = "key_mismatch"  # record key is not the payload's room_id (wrong partition)
    NOT_JOINED = "not_joined"  # sender left, was banned, or never joined within the grace period
    UNKNOWN_EVENT = "unknown_event"  # event not seen in the room within the grace period
    INVALID_THREAD = "invalid_thread"  # thread_id empty, non-string, or with m.fully_read
    THREAD_MISMATCH = "thread_mismatch"  # the event is not in the receipt's thread
    HELD_OVERFLOW = "held_overflow"  # too many receipts (or bytes) held for a dep or a partition
    ORIGIN_MISMATCH = "origin_mismatch"  # federation: user's server is not the EDU origin
    ORIGIN_NOT_IN_ROOM = "origin_not_in_room"  # federation: origin has no joined member
    INTERNAL_ERROR = "internal_error"  # a bug hit this record; it is parked, not lost
    # Parked by the engines (adapters/isolation.py), not by the rules:
    UNPRODUCIBLE = "unproducible"  # an output over the producer's limit, or refused by the broker
    POISON_BATCH = "poison_batch"  # processing it failed its batch again and again
