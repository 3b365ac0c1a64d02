"""Pydantic models of every topic payload (CONTRACT.md §2-3).

They validate inputs at the edge and are the single source of the JSON Schemas in `schemas/`.
Strict mode: a JSON string is never coerced into an int, an int never into a string.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from receipt_streams.core import ids

RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")
MEMBERSHIPS = ("join", "leave", "invite", "ban", "knock")


def _grammar(check: Any) -> AfterValidator:
    def run(value: str) -> str:
        try:
            return check(value)  # type: ignore[no-any-return]
        except ids.InvalidId as exc:
            raise PydanticCustomError("bad_id", str(exc)) from None

    # The same rooms, users and events come back in record after record: remember the IDs
    # that passed (bounded; a failure raises, so it is never remembered), so the grammar
    # runs once per ID, not once per record.
    return AfterValidator(functools.lru_cache(maxsize=1 << 16)(run))


def _documented(**schema: Any) -> Any:
    # For the JSON Schemas only: the grammar checks the sigil and the length (in bytes, which
    # is stricter), and constraints after a Python validator would run as Python, per record.
    return Field(json_schema_extra=schema)


RoomId = Annotated[str, _grammar(ids.validate_room_id), _documented(pattern="^!", maxLength=255)]
UserId = Annotated[str, _grammar(ids.validate_user_id), _documented(pattern="^@", maxLength=255)]
EventId = Annotated[
    str, _grammar(ids.validate_event_id), _documented(pattern="^\\$", maxLength=255)
]
ServerName = Annotated[str, _grammar(ids.validate_server_name), _documented(maxLength=255)]
ReceiptType = Literal["m.read", "m.read.private", "m.fully_read"]
Membership = Literal["join", "leave", "invite", "ban", "knock"]
StreamPos = Annotated[int, Field(ge=0, le=2**63 - 1)]
Millis = Annotated[int, Field(ge=0, le=2**63 - 1)]


def _thread(value: str) -> str:
    if not ids.valid_thread_id(value):
        raise PydanticCustomError("invalid_thread", "thread_id must be main or an event ID")
    return value


ThreadId = Annotated[
    str,
    AfterValidator(_thread),
    _documented(
        description="`main` or a thread root's event ID",
        pattern="^(main$|\\$)",
        minLength=1,
        maxLength=255,
    ),
]


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ClientReceipt(_Payload):
    """`receipts.client.v1`: a receipt from a local user, `ts` set by the server."""

    room_id: RoomId
    user_id: UserId
    receipt_type: ReceiptType
    event_id: EventId
    thread_id: ThreadId | None = None
    ts: Millis


class MembershipChange(_Payload):
    """`rooms.membership.v1`: one membership change, in the homeserver's stream order."""

    room_id: RoomId
    user_id: UserId
    membership: Membership
    stream_pos: StreamPos


def _at_most_255_bytes(value: str) -> str:
    if len(value.encode()) > ids.MAX_ID_BYTES:
        raise PydanticCustomError("too_long", "longer than 255 bytes")
    return value


class Relation(_Payload):
    rel_type: Annotated[
        str, Field(min_length=1, max_length=255), AfterValidator(_at_most_255_bytes)
    ]
    event_id: EventId


class RoomEvent(_Payload):
    """`rooms.events.v1`: an event persisted in the room (existence, order, thread)."""

    room_id: RoomId
    event_id: EventId
    sender: UserId
    stream_pos: StreamPos
    origin_server_ts: Millis
    relates_to: Relation | None = None


class ReceiptEdu(_Payload):
    edu_type: Literal["m.receipt"]
    # Entries are checked one by one (a bad entry must not sink the rest of the EDU).
    content: dict[str, Any]


class FederationReceipts(_Payload):
    """`receipts.federation.v1`: an inbound EDU as the remote server sent it."""

    origin: ServerName
    received_ts: Millis
    edu: ReceiptEdu


class AdminCommand(_Payload):
    """`receipts.admin.v1`: an operator's command to the fold. `purge_room` (key: the
    room_id) removes a room's receipts, room state and held receipts; `erase_user` (key: the
    user_id, one copy on every partition: `receipt-streams ctl erase-user` writes them)
    removes the user's receipts and held receipts in every room of the copy's partition."""

    command: Literal["purge_room", "erase_user"]
    room_id: RoomId | None = Field(None, description="purge_room: the room.")
    user_id: UserId | None = Field(None, description="erase_user: the user.")
    ts: Millis = Field(description="When the operator issued it (ms since the epoch).")
    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        None, description="Free text for the audit trail (logged, not interpreted)."
    )


# --- outputs -----------------------------------------------------------------------------


class ReceiptData(BaseModel):
    """What a receipt carries to clients: `ts`, `thread_id` when threaded, remote extras."""

    model_config = ConfigDict(extra="allow")
    ts: int
    thread_id: str | None = None


class ReceiptEvent(BaseModel):
    """The `m.receipt` event: `content[event_id][receipt_type][user_id] = data`."""

    type: Literal["m.receipt"]
    content: dict[str, dict[str, dict[str, ReceiptData]]]


class FullyReadContent(BaseModel):
    event_id: str


class FullyReadEvent(BaseModel):
    """The `m.fully_read` room account data event."""

    type: Literal["m.fully_read"]
    content: FullyReadContent


class RemovedOwnSlot(BaseModel):
    receipt_type: str
    thread_id: str | None


class RemovedSlot(RemovedOwnSlot):
    user_id: str


class SyncDelta(BaseModel):
    """`receipts.sync.v1`: one room's batched changes; empty parts are left out."""

    room_id: str
    seq: int = Field(
        description="Grows with each delta of a room: the changelog offset of the "
        "newest change it carries, so it is stable across restarts."
    )
    ts: int
    receipt: ReceiptEvent | None = Field(None, description="For every joined member.")
    private: dict[str, ReceiptEvent] | None = Field(None, description="For each owner only.")
    account_data: dict[str, FullyReadEvent] | None = Field(None, description="For each owner.")
    removed: list[RemovedSlot] | None = Field(
        None,
        description="Public m.read slots removed from the table (a room purge or a user "
        "erasure): for every joined member.",
    )
    removed_private: dict[str, list[RemovedOwnSlot]] | None = Field(
        None,
        description="Each owner's own m.read.private and m.fully_read slots removed: for "
        "that owner only.",
    )


class DlqError(BaseModel):
    code: str
    message: str


class DlqEdu(BaseModel):
    """Where a DLQ record's value came from when it is a part of an inbound EDU."""

    origin: str
    sha256: str = Field(description="Of the whole inbound record (the EDU as received).")
    size: int = Field(description="Bytes of the whole inbound record.")
    path: list[str] | None = Field(
        description="The part's place in the EDU content: [room, type, user], or a prefix "
        "when a whole room or type was refused; null in a summary record. Each step is cut "
        "at 255 bytes (the value holds the part exactly)."
    )
    entries: int = Field(
        description="Rejected parts this record stands for: 1, or in a summary record "
        "(after the per-EDU cap) the count of further rejections, all of them in its value."
    )


class DlqOutput(BaseModel):
    """Set when a DLQ record holds an output that could not be produced (over the
    producer's limit, or refused by the broker) instead of an input record."""

    topic: str = Field(description="Where the output was to go.")


class DlqRecord(BaseModel):
    """`receipts.dlq.v1`: a rejected input record, raw bytes kept, keyed by source topic.

    Bounded: `key` and `value` keep at most the configured bytes of the raw record
    (`dlq_max_key_bytes`, `dlq_max_value_bytes`), the message at most 1 KiB, the whole
    record at most `dlq_max_value_bytes * 4/3 + dlq_max_key_bytes * 4/3 + 4096` bytes.
    When `*_truncated` is false, `key`/`value` decoded are exactly the raw bytes."""

    topic: str
    partition: int
    offset: int
    key: str | None
    key_encoding: Literal["base64"] | None = Field(
        None,
        description="Set when `key` is base64: the raw bytes were not UTF-8, or JSON "
        "escaping would make them longer than base64.",
    )
    key_size: int | None = Field(None, description="Bytes of the whole raw key.")
    key_sha256: str | None = Field(None, description="sha256 (hex) of the whole raw key.")
    key_truncated: bool | None = Field(None, description="`key` holds only a prefix.")
    value: str | None = Field(
        description="The raw value; for a part of an inbound EDU, a federation record "
        "holding only that part (see `edu`)."
    )
    value_encoding: Literal["base64"] | None = Field(
        None,
        description="Set when `value` is base64: the raw bytes were not UTF-8, or JSON "
        "escaping would make them longer than base64.",
    )
    value_size: int | None = Field(None, description="Bytes of the whole raw value.")
    value_sha256: str | None = Field(None, description="sha256 (hex) of the whole raw value.")
    value_truncated: bool | None = Field(
        None, description="`value` holds only a prefix of the raw value."
    )
    error: DlqError
    ts: int
    edu: DlqEdu | None = Field(None, description="Set for a rejected part of an inbound EDU.")
    output: DlqOutput | None = Field(
        None,
        description="Set when `key` and `value` are an output that could not be produced; "
        "`topic`, `partition` and `offset` are then the input it came from (offset -1: a "
        "relay's output, from several inputs).",
    )


class ReceiptValue(BaseModel):
    """The receipts table's value, as on its compacted changelog (the analytics feed)."""

    event_id: str
    stream_pos: int | None = Field(
        None,
        description="The event's stream position; null when "
        "the event was not yet known (remote receipts).",
    )
    ts: int
    data: dict[str, Any] = Field(
        description="As shown to clients: `ts`, `thread_id` when "
        "threaded, and a remote server's extra fields as sent."
    )


ChangelogKey = tuple[str, str, ReceiptType, str | None]
"""The receipts changelog key: `[room_id, user_id, receipt_type, thread_id or null]`."""


class OutboundEdu(BaseModel):
    """`federation.edus.v1`: one `m.receipt` EDU for one destination."""

    destination: str
    origin: str
    edu_type: Literal["m.receipt"]
    content: dict[str, dict[str, dict[str, Any]]]


class FederationEntryEdu(BaseModel):
    """The EDU an entry came from, for a DLQ record of it on its room's partition."""

    sha256: str = Field(description="sha256 of the EDU record's value, hex.")
    size: int = Field(description="The EDU record's value, bytes.")
    dlq_bytes: int = Field(
        ge=0,
        description="DLQ bytes a rejection of this entry may take: its share of twice the "
        "EDU's size left by the EDU's other rejected parts (0: counted in "
        "receipt_streams_dlq_over_budget_total, not written).",
    )


class FederationEntry(BaseModel):
    """Internal `<app_id>-federation-in`: one inbound EDU entry, routed to its room."""

    origin: str
    room_id: str
    user_id: str
    event_id: str
    data: dict[str, Any] = Field(description="As sent, less a non-string thread_id.")
    edu: FederationEntryEdu | None = Field(
        None, description="Its EDU (absent: the entry gets a DLQ record of its own)."
    )


class OutboxRecord(BaseModel):
    """Internal `<app_id>-federation-out`: a local m.read change and where it must go."""

    room_id: str
    user_id: str
    thread_id: str | None
    event_id: str
    data: dict[str, Any]
    destinations: list[str] = Field(
        description="Servers with a joined member when the change was folded, less this server."
    )


# --- the feeds (core/feeds.py) -------------------------------------------------------------


ReadPositionKey = tuple[str, str, str | None]
"""The read-position feed's key: `[room_id, user_id, thread_id or null]`."""


class ReadPosition(BaseModel):
    """`receipts.read-positions.v1` (compacted): where a local user has read up to in a room
    and thread: the further of their `m.read` and `m.read.private` receipts. A null value
    (tombstone) means the slot was purged or erased."""

    room_id: str
    user_id: str
    thread_id: str | None = Field(description="A thread root, `main`, or null: unthreaded.")
    event_id: str
    stream_pos: int = Field(
        description="The event's stream position (the homeserver's stream ordering, from "
        "rooms.events.v1): the fold's order. It only grows per key; count a room's events "
        "after it for the user's unread notifications."
    )
    ts: int = Field(description="The receipt's ts (ms since epoch).")


class HistoryRecord(BaseModel):
    """`receipts.history.v1` (append-only): one accepted change of the receipts table, keyed
    like the receipts changelog. m.read.private and m.fully_read only when opted in."""

    room_id: str
    user_id: str
    receipt_type: ReceiptType
    thread_id: str | None = Field(description="A thread root, `main`, or null: unthreaded.")
    event_id: str
    stream_pos: int | None = Field(
        description="The event's stream position; null when the fold had not seen the "
        "event yet (a remote receipt)."
    )
    ts: int = Field(
        description="The receipt's ts: the server's for a local receipt, as sent for a remote one."
    )
    previous_event_id: str | None = Field(description="The slot's receipt before; null: first.")
    previous_stream_pos: int | None
    previous_ts: int | None
    origin_server_ts: int | None = Field(
        description="The event's origin_server_ts from rooms.events.v1; null when the fold "
        "had not seen the event yet (or saw it before this was kept)."
    )
    time_to_read_ms: int | None = Field(
        description="ts - origin_server_ts; null when origin_server_ts is. Both clocks are "
        "as reported, so a remote server's skew can make it negative."
    )
    source: Literal["client", "federation"]
