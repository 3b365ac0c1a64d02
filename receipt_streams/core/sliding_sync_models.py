"""Models of the homeserver-facing sliding-sync receipts endpoint (`POST
/_receipts/v1/sliding_sync`), the source of its JSON Schemas in `schemas/`. The endpoint checks
requests with `sliding_sync_requests` (Matrix errors); these describe the same shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from receipt_streams.core.models import EventId, ReceiptEvent, RoomId, UserId


class SlidingRoom(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["initial", "live", "previously"] | None = Field(
        None,
        description="`initial`: the room is sent from scratch in this response (new on the "
        "connection, or its timeline expanded). `live`/`previously`: the caller's own "
        "connection state, as this endpoint told it to remember. Absent: this service's "
        "connection state for `pos` decides.",
    )
    since: str | None = Field(None, description="With `previously`: the room's position.")
    timeline: list[EventId] = Field(
        default_factory=list,
        max_length=1000,
        description="The event IDs of the room's timeline in this response.",
    )


class SlidingReceiptsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    conn_id: str | None = Field(None, max_length=255, description="The connection's ID.")
    pos: str | None = Field(
        None, description="The `pos` of this connection's previous answer; absent: a new one."
    )
    timeout: int | None = Field(
        None,
        ge=0,
        description="Milliseconds to wait, at most, for this process to catch up to `pos` "
        "(read-after-write); it never waits for new receipts.",
    )
    rooms: dict[RoomId, SlidingRoom] = Field(
        default_factory=dict, description="The rooms of the response the extension covers."
    )
    live_rooms: list[RoomId] | None = Field(
        None,
        description="Given by a caller that keeps the per-room state itself: the other rooms "
        "live on the connection; those that changed come back in `remember` as previously.",
    )


class RoomPosition(BaseModel):
    status: Literal["live", "previously"]
    since: str | None = Field(None, description="With `previously`: pass it back later.")


class ReceiptsExtension(BaseModel):
    rooms: dict[RoomId, ReceiptEvent] = Field(
        description="One m.receipt event per room with something to send (others left out)."
    )


class SlidingReceiptsResponse(BaseModel):
    pos: str | None = Field(
        description="The position to send next time (unchanged, with nothing in it, when "
        "this process could not catch up to `pos` within `timeout`)."
    )
    receipts: ReceiptsExtension = Field(description="The `extensions.receipts` object.")
    cases: dict[RoomId, Literal["initial", "live", "previously"]] = Field(
        description="The case applied to each room."
    )
    remember: dict[RoomId, RoomPosition] = Field(
        description="The per-room positions to remember: every room of the request is live; "
        "a live room left out whose receipts changed is now previously, since `since`."
    )
