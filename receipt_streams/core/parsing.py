"""Raw record bytes to validated payloads, or a Rejection with a DLQ reason code."""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from receipt_streams.core.reasons import Reason

M = TypeVar("M", bound=BaseModel)


class Rejection(NamedTuple):
    """Why a record or entry was refused; it goes to the DLQ with this code and message."""

    reason: Reason
    message: str


def _reason_for(exc: ValidationError) -> Reason:
    err = exc.errors(include_url=False)[0]
    kind, loc = err["type"], err["loc"]
    if kind == "json_invalid" or (kind == "model_type" and not loc):
        return Reason.NOT_JSON
    if kind == "bad_id":
        return Reason.BAD_ID
    if loc and loc[0] == "receipt_type":
        return Reason.BAD_RECEIPT_TYPE
    if loc and loc[0] == "thread_id":
        return Reason.INVALID_THREAD
    return Reason.BAD_SHAPE


def _message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_payload(model: type[M], raw: bytes | None, max_bytes: int) -> M | Rejection:
    """Validate one record value against `model`, never raising on bad data."""
    if raw is None:
        return Rejection(Reason.NOT_JSON, "record has no value (tombstone)")
    if len(raw) > max_bytes:
        return Rejection(Reason.TOO_LARGE, f"record is {len(raw)} bytes, limit {max_bytes}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        reason = _reason_for(exc)
        if reason is Reason.NOT_JSON:
            return Rejection(reason, "value is not a UTF-8 JSON object")
        return Rejection(reason, _message(exc))


def check_key(key: bytes | None, room_id: str) -> Rejection | None:
    """Inputs must be keyed by room_id: a record on the wrong partition would corrupt state."""
    if key is not None and key == room_id.encode():
        return None
    shown = key.decode("utf-8", "replace") if key is not None else None
    return Rejection(Reason.KEY_MISMATCH, f"record key {shown!r} is not room_id {room_id!r}")
