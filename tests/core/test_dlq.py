"""DLQ records keep the raw bytes of every rejected input (CONTRACT §3)."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from receipt_streams.core.dlq import Source, dlq_record
from receipt_streams.core.models import DlqRecord
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason
from tests.core.harness import CLIENT, ROOM, T0, Harness, decoded, dlqs


def test_text_record() -> None:
    src = Source(CLIENT, 3, 17, b"!r:hs1", b'{"a": 1}')
    raw = dlq_record(src, Rejection(Reason.BAD_SHAPE, "ts: missing"), 99)
    assert orjson.loads(raw) == {
        "topic": CLIENT,
        "partition": 3,
        "offset": 17,
        "key": "!r:hs1",
        "key_size": 6,
        "key_sha256": hashlib.sha256(b"!r:hs1").hexdigest(),
        "key_truncated": False,
        "value": '{"a": 1}',
        "value_size": 8,
        "value_sha256": hashlib.sha256(b'{"a": 1}').hexdigest(),
        "value_truncated": False,
        "error": {"code": "bad_shape", "message": "ts: missing"},
        "ts": 99,
    }


def test_non_utf8_value_is_base64() -> None:
    value = b"\xff\xfe{\x00garbage\x80"
    src = Source(CLIENT, 0, 1, b"!r:hs1", value)
    record = orjson.loads(dlq_record(src, Rejection(Reason.NOT_JSON, "x"), 1))
    assert record["value_encoding"] == "base64"
    assert base64.b64decode(record["value"]) == value
    assert "key_encoding" not in record and record["key"] == "!r:hs1"


def test_non_utf8_key_is_base64() -> None:
    src = Source(CLIENT, 0, 1, b"\xc3\x28", b"{}")
    record = orjson.loads(dlq_record(src, Rejection(Reason.KEY_MISMATCH, "x"), 1))
    assert record["key_encoding"] == "base64"
    assert base64.b64decode(record["key"]) == b"\xc3\x28"
    assert record["value"] == "{}" and "value_encoding" not in record


def test_missing_key_and_tombstone_are_null() -> None:
    record = orjson.loads(
        dlq_record(Source(CLIENT, 0, 1, None, None), Rejection(Reason.NOT_JSON, "tombstone"), 1)
    )
    assert record["key"] is None and record["value"] is None
    assert "key_encoding" not in record and "value_encoding" not in record


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\xfd", b'{"room_id": "!r:hs1", "x": "\xe9"}', b"plain text", b"", None],
)
def test_processor_dlq_keeps_raw_bytes(value: bytes | None) -> None:
    h = Harness()
    h.now = T0 + 5
    effects = h.send(CLIENT, value, key=ROOM)
    [dlq] = dlqs(effects)
    assert dlq.topic == CLIENT
    record = decoded(dlq)
    assert record["error"]["code"] == "not_json"
    assert (record["topic"], record["partition"], record["offset"]) == (CLIENT, 0, 0)
    assert record["ts"] == T0 + 5
    if value is None:
        assert record["value"] is None
    elif record.get("value_encoding") == "base64":
        assert base64.b64decode(record["value"]) == value
        with pytest.raises(UnicodeDecodeError):
            value.decode("utf-8")
    else:
        assert record["value"].encode() == value


def test_every_dlq_record_matches_the_model() -> None:
    """`DlqRecord` is the source of the published JSON Schema."""
    records = [
        dlq_record(Source(CLIENT, 0, 1, b"\xc3\x28", b"\xff"), Rejection(Reason.NOT_JSON, "m"), 1),
        dlq_record(Source(CLIENT, 2, 3, None, None), Rejection(Reason.NOT_JSON, "m"), 1),
        dlq_record(Source(CLIENT, 2, 3, b"k", b"{}"), Rejection(Reason.BAD_SHAPE, "m"), 1),
    ]
    for raw in records:
        assert DlqRecord.model_validate_json(raw).model_dump(exclude_none=True) == {
            k: v for k, v in orjson.loads(raw).items() if v is not None
        }


def test_reason_codes_are_stable() -> None:
    assert {str(r) for r in Reason} >= {
        "not_json",
        "bad_shape",
        "bad_id",
        "bad_receipt_type",
        "too_large",
        "key_mismatch",
        "not_joined",
        "unknown_event",
        "invalid_thread",
        "thread_mismatch",
        "held_overflow",
    }
