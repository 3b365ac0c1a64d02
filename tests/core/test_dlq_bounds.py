"""DLQ records are bounded on their encoded bytes, whatever the input (issue 12): a record
the broker refuses would stop the stream behind it."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.dlq import (
    MESSAGE_BYTES,
    DlqBounds,
    Source,
    clip,
    dlq_record,
    edu_dlq_records,
    routing_shares,
)
from receipt_streams.core.federation import split_edu
from receipt_streams.core.models import DlqRecord
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason

CLIENT, FEDERATION = "receipts.client.v1", "receipts.federation.v1"
KAFKA_DEFAULT_MAX = 1_048_588  # the broker's default message.max.bytes
ORIGIN = "evil.example"
TS = 1_700_000_000_000


def raw_of(record: dict[str, Any], name: str) -> bytes:
    """What the record keeps of the raw key or value, as bytes."""
    kept = record[name]
    if record.get(f"{name}_encoding") == "base64":
        return base64.b64decode(kept)
    return kept.encode()


def check_bounded(raw_record: bytes, src: Source, bounds: DlqBounds) -> dict[str, Any]:
    assert len(raw_record) <= bounds.record_bytes
    record = orjson.loads(raw_record)
    DlqRecord.model_validate(record)
    for name, raw in (("key", src.key), ("value", src.value)):
        if raw is None:
            assert record[name] is None
            continue
        kept = raw_of(record, name)
        assert record[f"{name}_size"] == len(raw)
        assert record[f"{name}_sha256"] == hashlib.sha256(raw).hexdigest()
        if record[f"{name}_truncated"]:
            assert raw.startswith(kept) and len(kept) < len(raw)
        else:
            assert kept == raw  # re-driving tools use these bytes
    return record


def test_the_issue_thread_id_of_quotes_is_bounded() -> None:
    """330,000 double quotes used to escape to 1.32 MB, over the broker's record limit."""
    value = orjson.dumps({"room_id": "!r:hs1", "thread_id": '"' * 330_000})
    src = Source(CLIENT, 0, 5, b"!r:hs1", value)
    bounds = DlqBounds()
    raw = dlq_record(src, Rejection(Reason.TOO_LARGE, "x"), 1, bounds)
    record = check_bounded(raw, src, bounds)
    assert bounds.record_bytes == 27_312 and len(raw) < KAFKA_DEFAULT_MAX // 30
    assert record["value_truncated"] and record["value_size"] == len(value)
    assert len(raw_of(record, "value")) == bounds.value_bytes
    assert record["value_encoding"] == "base64"  # escaped text would be twice as long


def test_ordinary_json_stays_readable_text() -> None:
    value = orjson.dumps({"room_id": "!r:hs1", "user_id": "@u:hs1", "pad": "x" * 40_000})
    record = orjson.loads(dlq_record(Source(CLIENT, 0, 1, b"k", value), Rejection("x", "m"), 1))
    assert "value_encoding" not in record and record["value_truncated"]
    assert value.startswith(record["value"].encode())
    assert len(record["value"].encode()) == 16_384


def test_truncated_text_ends_on_a_character() -> None:
    value = ("é" * 10_000).encode()  # 2 bytes each: a cut at 16,384 splits none, 16,383 would
    src = Source(CLIENT, 0, 1, None, value)
    record = check_bounded(
        dlq_record(src, Rejection("x", "m"), 1, DlqBounds(16_383)), src, DlqBounds(16_383)
    )
    assert record["value"] == "é" * 8_191 and "value_encoding" not in record


def test_huge_key_and_message_are_bounded() -> None:
    src = Source(CLIENT, 0, 1, b"\x01" * 900_000, b"{}")
    message = "\x00" * 500_000  # 6 bytes each once escaped
    raw = dlq_record(src, Rejection(Reason.KEY_MISMATCH, message), 1)
    record = check_bounded(raw, src, DlqBounds())
    assert record["key_truncated"] and record["key_size"] == 900_000
    assert len(orjson.dumps(record["error"]["message"])) - 2 <= MESSAGE_BYTES


@pytest.mark.parametrize(
    "text", ["", "short", '"' * 1_000, "\x00" * 1_000, "é" * 5_000, "😀" * 999]
)
def test_clip_bounds_the_escaped_text(text: str) -> None:
    out = clip(text, 255)
    assert len(orjson.dumps(out)) - 2 <= 255
    assert out == text or (out.endswith("…") and text.startswith(out[:-1]))


raws = st.one_of(
    st.none(),
    st.binary(max_size=3_000),
    st.text(max_size=2_000).map(str.encode),
    st.sampled_from(['"', "\\", "\x00", "é", "😀", "a"]).flatmap(
        lambda c: st.integers(0, 3_000).map(lambda n: (c * n).encode())
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    key=raws,
    value=raws,
    message=st.text(max_size=3_000),
    value_bytes=st.integers(256, 2_048),
    key_bytes=st.integers(64, 512),
)
def test_every_record_is_within_its_bound_and_keeps_a_prefix(
    key: bytes | None, value: bytes | None, message: str, value_bytes: int, key_bytes: int
) -> None:
    bounds = DlqBounds(value_bytes, key_bytes)
    src = Source(CLIENT, 7, 2**40, key, value)
    check_bounded(dlq_record(src, Rejection(Reason.NOT_JSON, message), 1, bounds), src, bounds)


# --- inbound EDUs --------------------------------------------------------------------------


def edu(content: dict[str, Any]) -> bytes:
    envelope = {
        "origin": ORIGIN,
        "received_ts": TS,
        "edu": {"edu_type": "m.receipt", "content": content},
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def forged(n: int, pad: int = 0) -> dict[str, Any]:
    """`n` entries of users on another server than the origin: all rejected."""
    users = {
        f"@victim{i}:hs1": {"event_ids": [f"$e{i}"], "data": {"ts": TS, **({"p": "x" * pad})}}
        for i in range(n)
    }
    return {"!room:hs1": {"m.read": users}}


def edu_records(
    content: dict[str, Any], bounds: DlqBounds | None = None, cap: int = 100
) -> tuple[bytes, list[dict[str, Any]], list[bytes]]:
    bounds = bounds or DlqBounds()
    raw = edu(content)
    _, rejected = split_edu(ORIGIN, json.loads(raw)["edu"]["content"])
    out = edu_dlq_records(
        Source(FEDERATION, 0, 9, ORIGIN.encode(), raw), ORIGIN, TS, rejected, 1, bounds, cap
    )
    return raw, [orjson.loads(r) for r, _ in out], [r for r, _ in out]


def parts_of(record: dict[str, Any]) -> list[tuple[str, ...]]:
    content = json.loads(raw_of(record, "value"))["edu"]["content"]
    return [
        (room, t, user)
        for room, by_type in content.items()
        for t, by_user in by_type.items()
        for user in by_user
    ]


def test_600_forged_entries_take_at_most_twice_the_edu() -> None:
    """The issue's case: a 45 KB EDU of 600 forged entries wrote 600 copies of itself."""
    raw, records, encoded = edu_records(forged(600))
    assert 40_000 < len(raw) < 50_000
    assert sum(len(r) + len(FEDERATION) for r in encoded) <= 2 * len(raw)
    singles, summary = records[:-1], records[-1]
    assert 1 < len(singles) <= 100
    for r in singles:
        assert r["edu"]["entries"] == 1 and len(parts_of(r)) == 1
        assert r["edu"]["path"] == list(parts_of(r)[0])
        assert r["error"]["code"] == "origin_mismatch"
        assert r["edu"]["sha256"] == hashlib.sha256(raw).hexdigest()
        assert r["edu"]["origin"] == ORIGIN and r["edu"]["size"] == len(raw)
    assert summary["edu"]["path"] is None
    assert summary["edu"]["entries"] == 600 - len(singles)
    assert f"{600 - len(singles)} origin_mismatch" in summary["error"]["message"]


@pytest.mark.parametrize("n", [2, 5, 10, 20])
def test_a_small_edu_takes_at_most_twice_its_bytes_or_one_record(n: int) -> None:
    """The issue 12 probe: a 371-byte EDU of 5 forged entries wrote 3,955 bytes (five
    records of about 800 bytes each, under a 4,096-byte floor). Now those parts share one
    summary record, which keeps them all."""
    raw, records, encoded = edu_records(forged(n))
    total = sum(len(r) + len(FEDERATION) for r in encoded)
    assert len(records) == 1 or total <= 2 * len(raw)
    assert sum(r["edu"]["entries"] for r in records) == n
    if len(records) == 1:
        (summary,) = records
        assert summary["edu"]["path"] is None and not summary["value_truncated"]
        assert len(parts_of(summary)) == n


def test_the_cap_per_edu_holds() -> None:
    _, records, _ = edu_records(forged(50, pad=2_000), cap=5)
    assert len(records) == 6 and records[-1]["edu"]["entries"] == 45


def test_a_lone_rejection_is_one_record_with_that_entry() -> None:
    _, records, _ = edu_records(forged(1))
    (record,) = records
    assert record["edu"]["entries"] == 1 and not record["value_truncated"]
    assert json.loads(record["value"])["edu"]["content"] == forged(1)


def test_room_and_type_level_rejections_hold_that_subtree() -> None:
    content = {"not-a-room": {"m.read": {}}, "!r:hs1": {"m.read.private": {"@u:x": 1}}}
    # A good entry makes the EDU large enough for a record per rejected part.
    good = {"@ok:evil.example": {"event_ids": ["$e"], "data": {"ts": TS, "p": "x" * 20_000}}}
    _, records, _ = edu_records({**content, "!ok:hs1": {"m.read": good}})
    paths = sorted(tuple(r["edu"]["path"]) for r in records if r["edu"]["path"])
    assert paths == [("!r:hs1", "m.read.private"), ("not-a-room",)]
    for r in records:
        sub = json.loads(r["value"])["edu"]["content"]
        assert sub == {k: v for k, v in content.items() if k == r["edu"]["path"][0]}


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    pad=st.integers(0, 300),
    cap=st.integers(1, 150),
    value_bytes=st.sampled_from([256, 4_096, 16_384]),
)
def test_edu_records_are_bounded_and_lose_no_part(
    n: int, pad: int, cap: int, value_bytes: int
) -> None:
    bounds = DlqBounds(value_bytes)
    raw, records, encoded = edu_records(forged(n, pad), bounds, cap)
    assert all(len(r) <= bounds.record_bytes for r in encoded)
    total = sum(len(r) + len(FEDERATION) for r in encoded)  # DLQ records are keyed by topic
    assert len(records) == 1 or total <= 2 * len(raw)
    assert len(records) <= cap + 1
    assert sum(r["edu"]["entries"] for r in records) == n
    seen: list[tuple[str, ...]] = []
    for r in records:
        if not r["value_truncated"]:
            seen += parts_of(r)
    if not any(r["value_truncated"] for r in records):
        assert sorted(seen) == sorted(parts_of({"value": edu(forged(n, pad)).decode()}))


def test_edu_records_with_huge_paths_are_bounded() -> None:
    content = {
        '"' * 20_000: {"m.read": {}},  # a room that is no room ID: the path step is cut
        "!r:hs1": {"m.read": {"\x00" * 20_000: {"event_ids": ["$e"], "data": {"ts": 1}}}},
    }
    _, records, encoded = edu_records(content)
    assert len(records) == 2
    assert all(len(r) <= DlqBounds().record_bytes for r in encoded)
    for r in records:
        assert all(len(orjson.dumps(step)) - 2 <= 255 for step in r["edu"]["path"])
        assert r["value_size"] > 20_000  # the value holds the part exactly, up to the limit


@given(
    edu_bytes=st.integers(1, 200_000),
    used=st.integers(0, 400_000),
    entries=st.lists(st.integers(50, 70_000), max_size=700),
    max_records=st.integers(0, 200),
)
def test_routing_shares_keep_an_edu_within_twice_its_bytes_or_one_record(
    edu_bytes: int, used: int, entries: list[int], max_records: int
) -> None:
    shares = routing_shares(edu_bytes, used, entries, max_records)
    assert len(shares) == len(entries)
    given_out = [s for s in shares if s > 0]
    assert len(given_out) <= max_records
    if used == 0 and len(given_out) == 1:
        return  # too small an EDU for twice its bytes: one record
    assert used + sum(shares) <= max(used, 2 * edu_bytes)
