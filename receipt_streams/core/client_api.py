"""Client-server API checks for the receipts and read-markers endpoints, as Matrix errors.

Pure: what the HTTP layer can check at once, before a receipt is written to Kafka. The fold
remains the final judge (joins and events the API has not seen, thread membership).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from receipt_streams.core import ids
from receipt_streams.core.models import RECEIPT_TYPES
from receipt_streams.core.validation import check_thread_param


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    errcode: str
    error: str
    retry_after_ms: int | None = None

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"errcode": self.errcode, "error": self.error}
        if self.retry_after_ms is not None:
            body["retry_after_ms"] = self.retry_after_ms
        return body


@dataclass(frozen=True, slots=True)
class ReceiptRequest:
    room_id: str
    receipt_type: str
    event_id: str
    thread_id: str | None


def json_object(body: bytes) -> dict:
    """The request body as a JSON object: M_NOT_JSON when absent or not JSON, M_BAD_JSON
    when JSON but not an object."""
    if not body.strip():
        raise ApiError(400, "M_NOT_JSON", "Content not JSON: the body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "M_NOT_JSON", "Content not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "M_BAD_JSON", "Content must be a JSON object")
    return value


def check_room_id(room_id: str) -> str:
    try:
        return ids.validate_room_id(room_id)
    except ids.InvalidId as exc:
        raise ApiError(400, "M_INVALID_PARAM", str(exc)) from None


def check_event_id(event_id: object, what: str = "event ID") -> str:
    try:
        return ids.validate_event_id(event_id)
    except ids.InvalidId as exc:
        raise ApiError(400, "M_INVALID_PARAM", f"{what}: {exc}") from None


def receipt_request(room_id: str, receipt_type: str, event_id: str, body: bytes) -> ReceiptRequest:
    """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
    check_room_id(room_id)
    if receipt_type not in RECEIPT_TYPES:
        raise ApiError(
            400, "M_INVALID_PARAM", f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}"
        )
    check_event_id(event_id)
    content = json_object(body)
    thread_id = content.get("thread_id")
    if "thread_id" in content and thread_id is None:  # explicit null: not a string (spec 400)
        raise ApiError(400, "M_INVALID_PARAM", "thread_id must be a non-empty string")
    if (bad := check_thread_param(receipt_type, thread_id)) is not None:
        raise ApiError(400, "M_INVALID_PARAM", bad.message)
    return ReceiptRequest(room_id, receipt_type, event_id, thread_id)


def read_markers_request(room_id: str, body: bytes) -> list[ReceiptRequest]:
    """POST /rooms/{roomId}/read_markers: `m.fully_read`, `m.read`, `m.read.private`, each
    optional, each acting exactly like the receipts endpoint."""
    check_room_id(room_id)
    content = json_object(body)
    out = []
    for receipt_type in ("m.fully_read", "m.read", "m.read.private"):
        if receipt_type in content:
            event_id = check_event_id(content[receipt_type], receipt_type)
            out.append(ReceiptRequest(room_id, receipt_type, event_id, None))
    return out


def refuse_if_not_joined(membership: str | None, user_id: str, room_id: str) -> None:
    """403 when the membership view knows the user is not joined; unknown users pass (their
    join may not have reached the view yet: the fold decides)."""
    if membership is not None and membership != "join":
        raise ApiError(403, "M_FORBIDDEN", f"{user_id} is not joined to {room_id}")
