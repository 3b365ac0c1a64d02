"""DLQ records (CONTRACT §3): a rejected input with its raw bytes, so nothing is lost silently."""

from __future__ import annotations

import base64
from typing import NamedTuple

import orjson

from receipt_streams.core.parsing import Rejection


class Source(NamedTuple):
    """Where an input record came from, with its raw key and value bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _text(raw: bytes | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def dlq_record(src: Source, rejection: Rejection, now_ms: int) -> bytes:
    key, key_enc = _text(src.key)
    value, value_enc = _text(src.value)
    record: dict[str, object] = {
        "topic": src.topic,
        "partition": src.partition,
        "offset": src.offset,
        "key": key,
        "value": value,
        "error": {"code": str(rejection.reason), "message": rejection.message},
        "ts": now_ms,
    }
    if key_enc:
        record["key_encoding"] = key_enc
    if value_enc:
        record["value_encoding"] = value_enc
    return orjson.dumps(record)
