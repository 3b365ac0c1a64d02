"""Client-server API checks for the receipts and read-markers endpoints, as Matrix errors.

Pure: what the HTTP layer can check at once, before a receipt is written to Kafka. The fold
remains the final judge (joins and events the API has not seen, thread membership).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

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
    if thread_id is not None and not ids.valid_thread_id(thread_id):
        raise ApiError(
            400, "M_INVALID_PARAM", "thread_id must be 'main' or an event ID of at most 255 bytes"
        )
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


# --- the request line, strictly -------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_component(raw: str, what: str) -> str:
    """A percent-encoded path segment or query part. Invalid escapes and invalid UTF-8 are a
    400: lenient decoders keep them as literal text, which would make them part of an ID."""
    if _BAD_ESCAPE.search(raw):
        raise ApiError(400, "M_INVALID_PARAM", f"{what}: invalid percent-encoding")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "M_INVALID_PARAM", f"{what}: not UTF-8") from None


def path_params(template: str, raw_path: str) -> dict[str, str]:
    """The `{name}` segments of a route `template`, decoded from the raw request path."""
    names, segments = template.split("/"), raw_path.split("/")
    if len(names) != len(segments):
        raise ApiError(400, "M_INVALID_PARAM", "Malformed path")
    return {
        name[1:-1]: decode_component(segment, name[1:-1])
        for name, segment in zip(names, segments, strict=True)
        if name.startswith("{") and name.endswith("}")
    }


def query_params(raw_query: str) -> dict[str, str]:
    """A raw query string (`a=1&b=%41`, `+` for a space), strictly decoded; the first value of
    a repeated name wins."""
    out: dict[str, str] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = decode_component(raw_name.replace("+", " "), "query parameter name")
        out.setdefault(name, decode_component(raw_value.replace("+", " "), name))
    return out


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The access token: `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110),
    else the `access_token` query parameter."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return query_token or None


_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")


def plausible_token(token: str) -> bool:
    """Printable ASCII, at most 1 KiB: anything else is refused unasked (a verifier would put
    it in a header of its own request)."""
    return _TOKEN.fullmatch(token) is not None


def parse_flag(value: str | None, name: str) -> bool:
    """A boolean query parameter: absent, `false` or `true`."""
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise ApiError(400, "M_INVALID_PARAM", f"{name} must be true or false")
