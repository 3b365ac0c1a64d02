"""Request bodies of the two sliding-sync receipts endpoints, checked into plain values.

The homeserver-facing form names, per room of its response, the room's status and timeline;
the client-facing form is an MSC4186 request body of which only `room_subscriptions`,
`conn_id` and `extensions.receipts` are read. Everything else is refused as a Matrix error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from receipt_streams.core import ids
from receipt_streams.core.client_api import ApiError, check_event_id, check_room_id, json_object
from receipt_streams.core.sliding_sync import INITIAL, LIVE, PREVIOUSLY, RoomRequest, Sent
from receipt_streams.core.sync_view import BadToken, Token

MAX_ROOMS = 1000  # rooms in one request
MAX_TIMELINE = 1000  # event IDs of one room's timeline
MAX_CONN_ID = 255


def _bad(message: str) -> ApiError:
    return ApiError(400, "M_INVALID_PARAM", message[:300])


def _conn_id(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.encode()) > MAX_CONN_ID:
        raise _bad(f"conn_id must be a string of at most {MAX_CONN_ID} bytes")
    return value


def _pos(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise _bad("pos must be a non-empty string")
    return value


def _timeout(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad("timeout must be a non-negative integer (milliseconds)")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object")
    return value


def _room_ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ROOMS:
        raise _bad(f"{what} must be a list of at most {MAX_ROOMS} room IDs")
    for room_id in value:
        if not isinstance(room_id, str):
            raise _bad(f"{what} must be a list of room IDs")
        check_room_id(room_id)
    return value


def _since(value: Any, room_id: str) -> Token:
    if not isinstance(value, str):
        raise _bad(f"rooms[{room_id}].since must be a position string")
    try:
        return Token.decode(value)
    except BadToken:
        raise ApiError(400, "M_UNKNOWN_POS", f"Unknown position for {room_id}") from None


@dataclass(frozen=True)
class InternalRequest:
    user_id: str
    conn_id: str
    pos: str | None
    timeout_ms: int
    rooms: dict[str, RoomRequest]
    live_rooms: list[str] | None  # given: the caller keeps the per-room state itself


def internal_request(body: bytes) -> InternalRequest:
    """`POST /_receipts/v1/sliding_sync`: one homeserver sliding-sync response's rooms."""
    d = json_object(body)
    user_id = d.get("user_id")
    try:
        ids.validate_user_id(user_id)
    except ids.InvalidId as exc:
        raise _bad(f"user_id: {exc}") from None
    rooms_in = _object(d.get("rooms", {}), "rooms")
    if len(rooms_in) > MAX_ROOMS:
        raise _bad(f"at most {MAX_ROOMS} rooms")
    rooms: dict[str, RoomRequest] = {}
    for room_id, spec in rooms_in.items():
        check_room_id(room_id)
        spec = _object(spec, f"rooms[{room_id}]")
        timeline = spec.get("timeline", [])
        if not isinstance(timeline, list) or len(timeline) > MAX_TIMELINE:
            raise _bad(f"rooms[{room_id}].timeline must be a list of at most {MAX_TIMELINE}")
        events = tuple(check_event_id(e, f"rooms[{room_id}].timeline") for e in timeline)
        status = spec.get("status")
        sent: Sent | None = None
        if status == LIVE:
            sent = Sent(LIVE)
        elif status == PREVIOUSLY:
            sent = Sent(PREVIOUSLY, _since(spec.get("since"), room_id))
        elif status not in (None, INITIAL):
            raise _bad(f"rooms[{room_id}].status must be initial, live or previously")
        rooms[room_id] = RoomRequest(status == INITIAL, events, sent)
    live = d.get("live_rooms")
    return InternalRequest(
        user_id,
        _conn_id(d.get("conn_id")),
        _pos(d.get("pos")),
        _timeout(d.get("timeout")),
        rooms,
        _room_ids(live, "live_rooms") if live is not None else None,
    )


@dataclass(frozen=True)
class ClientRequest:
    conn_id: str
    subscriptions: dict[str, int]  # room -> timeline_limit
    enabled: bool | None  # the receipts extension; None: as the connection had it
    rooms: list[str] | None  # the extension's `rooms` (None or "*": every subscription)


def client_request(body: bytes) -> ClientRequest:
    """The MSC4186 request body, as far as the receipts of explicit rooms go."""
    d = json_object(body)
    subs_in = _object(d.get("room_subscriptions", {}), "room_subscriptions")
    if len(subs_in) > MAX_ROOMS:
        raise _bad(f"at most {MAX_ROOMS} room subscriptions")
    subscriptions: dict[str, int] = {}
    for room_id, spec in subs_in.items():
        check_room_id(room_id)
        limit = _object(spec, f"room_subscriptions[{room_id}]").get("timeline_limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise _bad(f"room_subscriptions[{room_id}].timeline_limit must be an integer >= 0")
        subscriptions[room_id] = limit
    ext = _object(_object(d.get("extensions", {}), "extensions").get("receipts", {}), "receipts")
    enabled = ext.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise _bad("extensions.receipts.enabled must be a boolean")
    rooms = ext.get("rooms")
    if rooms is not None:
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise _bad("extensions.receipts.rooms must be a list of room IDs or '*'")
        rooms = None if "*" in rooms else _room_ids(rooms, "extensions.receipts.rooms")
    return ClientRequest(_conn_id(d.get("conn_id")), subscriptions, enabled, rooms)
