"""The exporter's record -> row functions (pure): the receipts changelog, the history feed in
each key layout it may use, and admin commands."""

from __future__ import annotations

import orjson
import pytest

from receipt_streams.ops.export import history_row, receipt_row, removal_row

KEY = ["!r:hs1", "@a:hs1", "m.read", None]
FIELDS = {
    "event_id": "$e2",
    "previous_event_id": "$e1",
    "origin_server_ts": 900,
    "ts": 1000,
    "time_to_read_ms": 100,
    "source": "client",
}


def test_changelog_records_and_tombstones() -> None:
    value = {"event_id": "$e", "stream_pos": 3, "ts": 5, "data": {"ts": 5}}
    row = receipt_row(1, 42, 77, orjson.dumps(KEY), orjson.dumps(value))
    assert row == {
        "partition": 1,
        "offset": 42,
        "written_ms": 77,
        "deleted": False,
        "room_id": "!r:hs1",
        "user_id": "@a:hs1",
        "receipt_type": "m.read",
        "thread_id": None,
        "event_id": "$e",
        "stream_pos": 3,
        "ts": 5,
        "data": '{"ts":5}',
    }
    tomb = receipt_row(1, 43, 78, orjson.dumps(KEY), None)
    assert tomb["deleted"] and "event_id" not in tomb


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, {"key": KEY, **FIELDS}),
        (
            None,
            {
                "key": dict(
                    zip(("room_id", "user_id", "receipt_type", "thread_id"), KEY, strict=True)
                ),
                **FIELDS,
            },
        ),
        (None, {"room_id": KEY[0], "user_id": KEY[1], "receipt_type": KEY[2], **FIELDS}),
        (orjson.dumps(KEY), FIELDS),
    ],
)
def test_history_records_in_every_key_layout(key: bytes | None, value: dict) -> None:
    row = history_row(5, key, orjson.dumps(value))
    assert row == {
        "written_ms": 5,
        "room_id": "!r:hs1",
        "user_id": "@a:hs1",
        "receipt_type": "m.read",
        "thread_id": None,
        **FIELDS,
    }


@pytest.mark.parametrize(
    "raw", [b"nope", b"[1]", orjson.dumps({"ts": 1}), orjson.dumps({"key": KEY})]
)
def test_history_records_of_another_shape_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        history_row(0, None, raw)


def test_admin_commands_as_removals() -> None:
    purge = orjson.dumps({"command": "purge_room", "room_id": "!r:hs1", "ts": 1})
    erase = orjson.dumps({"command": "erase_user", "user_id": "@a:hs1", "ts": 1})
    assert removal_row(9, purge) == {"kind": "room", "target": "!r:hs1", "written_ms": 9, "ts": 1}
    assert removal_row(9, erase) == {"kind": "user", "target": "@a:hs1", "written_ms": 9, "ts": 1}
    for bad in (None, b"x", b"[]", orjson.dumps({"command": "purge_room"})):
        assert removal_row(9, bad) is None
