"""The pure parts of ctl: reset plans, DLQ selection and truncation, diffs, inspect, lag."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from receipt_streams.config import Settings
from receipt_streams.entrypoints.cli import main
from receipt_streams.ops import dlq, inspect, local_state
from receipt_streams.ops.kafka import parse_group
from receipt_streams.ops.output import CtlError
from receipt_streams.ops.rebuild import caught_up, diff_tables, rebuild_settings
from receipt_streams.ops.reset import Target, plan_reset
from receipt_streams.ops.status import lag_rows, worker_urls
from receipt_streams.ops.timespec import parse_time_ms

T0, T1 = TopicPartition("in", 0), TopicPartition("in", 1)
BEGIN = {T0: 10, T1: 0}
END = {T0: 100, T1: 50}
CURRENT = {T0: 80}  # T1: nothing committed


def news(target: Target, at_time=None) -> dict:
    return {
        (m.topic, m.partition): (m.current, m.new)
        for m in plan_reset(target, CURRENT, BEGIN, END, at_time)
    }


def test_reset_to_earliest_latest_and_offset_stay_within_what_the_broker_holds() -> None:
    assert news(Target("earliest")) == {("in", 0): (80, 10), ("in", 1): (None, 0)}
    assert news(Target("latest")) == {("in", 0): (80, 100), ("in", 1): (None, 50)}
    assert news(Target("offset", 60)) == {("in", 0): (80, 60), ("in", 1): (None, 50)}
    assert news(Target("offset", 5)) == {("in", 0): (80, 10), ("in", 1): (None, 5)}


def test_reset_shift_moves_from_the_commit_or_the_beginning() -> None:
    assert news(Target("shift", -30)) == {("in", 0): (80, 50), ("in", 1): (None, 0)}
    assert news(Target("shift", 500)) == {("in", 0): (80, 100), ("in", 1): (None, 50)}


def test_reset_to_a_datetime_uses_the_first_offset_at_or_after_it() -> None:
    # No record at or after the time on T1: it goes to its end (nothing to replay there).
    assert news(Target("datetime", 123), {T0: 42, T1: None}) == {
        ("in", 0): (80, 42),
        ("in", 1): (None, 50),
    }


def test_times_on_the_command_line() -> None:
    assert parse_time_ms("2024-05-01T00:00:00Z") == 1_714_521_600_000
    assert parse_time_ms("2024-05-01T00:00:00") == 1_714_521_600_000  # naive is UTC
    assert parse_time_ms("2024-05-01T02:00:00+02:00") == 1_714_521_600_000
    assert parse_time_ms("1714521600000") == 1_714_521_600_000
    assert parse_time_ms("2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time_ms("yesterday")


def entry(record: dict, partition: int = 0, offset: int = 7, ts: int = 1000) -> dlq.Entry:
    return dlq.decode(partition, offset, ts, orjson.dumps(record))


RECEIPT = b'{"room_id":"!r:hs1","user_id":"@c:hs1"}'
BASE = {
    "topic": "receipts.client.v1",
    "partition": 1,
    "offset": 5,
    "key": "!r:hs1",
    "value": RECEIPT.decode(),
    "error": {"code": "not_joined", "message": "@c:hs1 is not joined"},
    "ts": 3_600_000,
}


@pytest.mark.parametrize(
    "extra",
    [
        {"truncated": True},
        {"value_truncated": True},
        {"value_size": len(RECEIPT) + 1, "value_sha256": "x"},
        {"original_size": 100_000},
        {"truncation": {"original_size": 9, "sha256": "x"}},
    ],
)
def test_truncated_records_are_detected_whatever_the_field_names(extra: dict) -> None:
    e = entry({**BASE, **extra})
    assert dlq.truncation(e) is not None
    (decision,) = dlq.plan_redrive(Settings(), [e], set())
    assert not decision.send and decision.why.startswith("truncated")
    assert "receipts.client.v1 partition 1 offset 5" in decision.why


def test_a_whole_record_is_not_truncated_and_its_raw_bytes_are_exact() -> None:
    e = entry({**BASE, "value_size": len(RECEIPT), "truncated": False})
    assert dlq.truncation(e) is None
    assert dlq.raw(e, "value") == RECEIPT and dlq.raw(e, "key") == b"!r:hs1"
    binary = entry(
        {**BASE, "value": base64.b64encode(b"\xff\x00").decode(), "value_encoding": "base64"}
    )
    assert dlq.raw(binary, "value") == b"\xff\x00"
    shown = dlq.shown(binary)
    assert shown["value_decoded"] == {"base64": "/wA="}
    assert shown["value_sha256"] == hashlib.sha256(b"\xff\x00").hexdigest()


def test_show_keeps_every_field_even_unknown_ones() -> None:
    shown = dlq.shown(entry({**BASE, "value_size": 40, "new_field": 1}))
    assert shown["new_field"] == 1 and shown["extra_fields"] == ["new_field", "value_size"]
    assert shown["value_decoded"] == orjson.loads(RECEIPT)


def test_an_output_that_could_not_be_produced_is_not_redriven_to_the_input_topic() -> None:
    e = entry({**BASE, "error": {"code": "unproducible", "message": "x"}, "output": {"topic": "o"}})
    (decision,) = dlq.plan_redrive(Settings(), [e], set())
    assert not decision.send and decision.why.startswith("an output to o")


def test_redrive_plan_skips_what_the_ledger_holds_and_unreadable_records() -> None:
    s = Settings()
    fresh, done, bad = entry(BASE, offset=1), entry(BASE, offset=2), dlq.decode(0, 3, 0, b"nope")
    decisions = dlq.plan_redrive(s, [fresh, done, bad], {dlq.ledger_key(s, done)})
    assert [(d.send, d.why.split(":")[0]) for d in decisions] == [
        (True, "to receipts.client.v1"),
        (False, "already re-driven"),
        (False, "unreadable DLQ record"),
    ]
    assert dict(dlq.headers(s, fresh)) == {
        dlq.REDRIVEN_FROM: f"{s.topic_dlq}:0:1".encode(),
        dlq.DLQ_REASON: b"not_joined",
        dlq.ORIGINAL: b"receipts.client.v1:1:5",
    }


def test_filters_and_counts() -> None:
    a = entry({**BASE, "ts": 0}, offset=1)
    b = entry(
        {**BASE, "error": {"code": "unknown_event", "message": ""}, "ts": 7_300_000}, offset=2
    )
    f = dlq.Filters(reasons=frozenset({"unknown_event"}))
    assert [e.id for e in (a, b) if f.match(e)] == ["0:2"]
    since = dlq.Filters(since_ms=3_600_000, until_ms=7_300_001)
    assert [e.id for e in (a, b) if since.match(e)] == ["0:2"]
    assert [e.id for e in (a, b) if dlq.Filters(ids=frozenset({(0, 1)})).match(e)] == ["0:1"]
    assert dlq.Filters().empty and not f.empty
    assert dlq.counts([a, b]) == {
        "total": 2,
        "by_reason": {"not_joined": 1, "unknown_event": 1},
        "by_hour": {"1970-01-01T00:00Z": 1, "1970-01-01T02:00Z": 1},
    }
    assert dlq.parse_id("3:42") == (3, 42) == dlq.parse_id("receipts.dlq.v1:3:42")
    with pytest.raises(CtlError):
        dlq.parse_id("42")


def key(*parts: object) -> bytes:
    return orjson.dumps(list(parts))


def value(event: str, pos: int | None) -> bytes:
    return orjson.dumps({"event_id": event, "stream_pos": pos, "ts": 1, "data": {"ts": 1}})


def test_diff_names_only_the_keys_that_differ() -> None:
    k1, k2, k3 = (
        key("!r", "@a", "m.read", None),
        key("!r", "@b", "m.read", None),
        key("!r", "@c", "m.read", "main"),
    )
    left = {k1: value("$1", 1), k2: value("$2", 2), k3: value("$3", 3)}
    right = {k1: value("$1", 1), k2: value("$9", 9)}
    assert diff_tables(left, dict(left)) == []
    assert diff_tables(left, {k: orjson.dumps(orjson.loads(v)) for k, v in left.items()}) == []
    assert [d["key"] for d in diff_tables(left, right)] == [
        ["!r", "@b", "m.read", None],
        ["!r", "@c", "m.read", "main"],
    ]
    assert diff_tables(left, right)[1]["right"] is None


def test_inspect_filters_by_room_user_and_event() -> None:
    entries = {
        key("!r", "@a", "m.read", None): value("$1", 1),
        key("!r", "@b", "m.read.private", None): value("$1", 1),
        key("!s", "@a", "m.read", "main"): value("$2", 2),
    }
    assert [r["user_id"] for r in inspect.rows(entries, room="!r")] == ["@a", "@b"]
    assert [r["room_id"] for r in inspect.rows(entries, user="@a")] == ["!r", "!s"]
    assert [(r["room_id"], r["thread_id"]) for r in inspect.rows(entries, event="$2")] == [
        ("!s", "main")
    ]
    assert inspect.rows(entries, room="!r", event="$2") == []


def test_lag_rows_and_worker_urls() -> None:
    rows = lag_rows(["in"], {T0: 90}, BEGIN, END, {T0: "w1@h"})
    assert [(r["partition"], r["committed"], r["lag"], r["owner"]) for r in rows] == [
        (0, 90, 10, "w1@h"),
        (1, None, 50, None),  # nothing committed: the fold starts at the beginning
    ]
    s = Settings(web_port=7000, app_id="app")
    members = [
        ("app", "10.0.0.2", "app-fold@web:7000"),
        ("app", "10.0.0.1", "aiokafka-0.14.0"),  # no port named: RECEIPT_STREAMS_WEB_PORT
        ("app-sync-deltas", "10.0.0.2", "app-sync-deltas@web:7000"),
        ("app", "127.0.0.1", "app-fold@web:7001"),  # two workers on one host
        ("app", "127.0.0.1", "app-fold@web:7002"),
        ("app", "::1", "app-fold@web:7003"),
    ]
    assert worker_urls(s, [], members) == {
        "http://10.0.0.1:7000": ["app"],
        "http://10.0.0.2:7000": ["app", "app-sync-deltas"],
        "http://127.0.0.1:7001": ["app"],
        "http://127.0.0.1:7002": ["app"],
        "http://[::1]:7003": ["app"],
    }
    assert worker_urls(s, ["http://w:1/"], members) == {"http://w:1": []}


def test_group_description_is_decoded_with_its_assignment() -> None:
    assignment = ConsumerProtocolMemberAssignment(0, [("in", [1, 0])], b"").encode()
    group = parse_group(
        (0, "g", "Stable", "consumer", "range", [("m1", "c1", "/10.0.0.1", b"", assignment)])
    )
    assert group.state == "Stable" and group.members[0].host == "10.0.0.1"
    assert group.members[0].assignment == [T0, T1]


def test_rebuild_writes_only_to_topics_of_its_own() -> None:
    s = Settings(app_id="live")
    s2 = rebuild_settings(s, "live-v2", Path("/tmp/v2"), 1234)
    assert (s2.topic_client, s2.topic_events, s2.topic_membership, s2.topic_federation) == (
        s.topic_client,
        s.topic_events,
        s.topic_membership,
        s.topic_federation,
    )
    written = {
        s2.topic_sync,
        s2.topic_edus,
        s2.topic_dlq,
        s2.topic_ticks,
        s2.topic_read_positions,
        s2.topic_history,
        s2.changelog_receipts,
    }
    assert all(t.startswith("live-v2") for t in written)
    assert not s2.run_relays and not s2.serve_api
    assert caught_up({T0: 60}, {T0: 100, T1: 0}) == (60, 100)


def test_local_state_refuses_while_a_worker_runs_it(tmp_path: Path) -> None:
    (tmp_path / "stores" / "receipts-0").mkdir(parents=True)
    (tmp_path / "RUNNING").write_text(str(os.getpid()))
    with pytest.raises(CtlError, match="live process"):
        local_state.wipe(tmp_path)
    (tmp_path / "RUNNING").write_text("999999999")  # a dead worker's marker
    assert local_state.wipe(tmp_path, dry_run=True) == [str(tmp_path / "stores")]
    assert (tmp_path / "stores").exists()
    local_state.wipe(tmp_path)
    assert not (tmp_path / "stores").exists() and not (tmp_path / "RUNNING").exists()


def test_cli_errors_say_what_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["ctl", "rebuild", "--local", str(tmp_path / "nope"), "--json"]) == 2
    out = orjson.loads(capsys.readouterr().out)
    assert "not a directory" in out["error"] and "RECEIPT_STREAMS_DATA_DIR" in out["hint"]
    assert main(["ctl", "inspect"]) == 2
    assert "pass --room" in capsys.readouterr().err
