"""The fold on the real broker: a scripted room gives exactly the expected deltas, bad
records land in the DLQ while good ones around them are folded, held receipts wait."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.scenario import (
    Room,
    deltas_until_sentinel,
    merge_parts,
    pass_barrier,
    without_barriers,
)
from tests.support.spec import validate_receipt_event
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, B, C, D = "@a:hs1", "@b:hs1", "@c:hs1", "@d:hs1"


@pytest.fixture(params=["batch", "faust"])
def worker(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    """Both fold engines must give the same deltas, DLQ records and held-receipt outcomes."""
    s = worker_settings(kafka_bootstrap, tmp_path, engine=request.param)
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        yield w
    finally:
        w.stop()


def rec(event_id: str, rtype: str, user: str, ts: int, thread: str | None = None) -> dict:
    data: dict[str, Any] = {"ts": ts} if thread is None else {"ts": ts, "thread_id": thread}
    return {"receipt": {"type": "m.receipt", "content": {event_id: {rtype: {user: data}}}}}


async def test_scripted_room_gives_exactly_the_expected_deltas(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!scripted:hs1")
    setup = [room.member(u) for u in (A, B, C, D, "@sentinel:hs1")]
    setup += [room.member(D, "leave")]
    setup += [
        room.event("$e1"),
        room.event("$e2"),
        room.event("$root"),
        room.event("$t1", relates_to=("m.thread", "$root")),
        room.event("$e3"),
        room.event("$ann", relates_to=("m.annotation", "$t1")),
    ]
    await produce(kafka_bootstrap, setup)
    await pass_barrier(kafka_bootstrap, room, s.topic_dlq)  # D's leave is folded

    steps: list[tuple[str, list, dict]] = [
        ("first m.read", [room.receipt(A, "m.read", "$e1", 1)], rec("$e1", "m.read", A, 1)),
        ("same event again", [room.receipt(A, "m.read", "$e1", 2)], {}),
        ("moves forward", [room.receipt(A, "m.read", "$e2", 3)], rec("$e2", "m.read", A, 3)),
        ("older is ignored", [room.receipt(A, "m.read", "$e1", 4)], {}),
        (
            "private only to owner",
            [room.receipt(B, "m.read.private", "$e2", 5)],
            {
                "private": {
                    B: {"type": "m.receipt", "content": {"$e2": {"m.read.private": {B: {"ts": 5}}}}}
                }
            },
        ),
        (
            "public slot independent of private",
            [room.receipt(B, "m.read", "$e1", 6)],
            rec("$e1", "m.read", B, 6),
        ),
        (
            "fully_read is account data",
            [room.receipt(C, "m.fully_read", "$e2", 7)],
            {"account_data": {C: {"type": "m.fully_read", "content": {"event_id": "$e2"}}}},
        ),
        ("fully_read never moves back", [room.receipt(C, "m.fully_read", "$e1", 8)], {}),
        (
            "threaded receipt",
            [room.receipt(C, "m.read", "$t1", 9, "$root")],
            rec("$t1", "m.read", C, 9, "$root"),
        ),
        (
            "main is its own slot",
            [room.receipt(C, "m.read", "$e3", 10, "main")],
            rec("$e3", "m.read", C, 10, "main"),
        ),
        (
            "unthreaded is its own slot",
            [room.receipt(C, "m.read", "$e2", 11)],
            rec("$e2", "m.read", C, 11),
        ),
        (
            "annotation of a threaded event is in the thread",
            [room.receipt(C, "m.read", "$ann", 12, "$root")],
            rec("$ann", "m.read", C, 12, "$root"),
        ),
        ("left user rejected", [room.receipt(D, "m.read", "$e3", 13)], {}),
        ("thread mismatch rejected", [room.receipt(A, "m.read", "$t1", 14, "main")], {}),
        (
            "thread_id with fully_read rejected",
            [room.receipt(A, "m.fully_read", "$e3", 15, "main")],
            {},
        ),
        (
            "thread root is in main",
            [room.receipt(A, "m.read", "$root", 16, "main")],
            rec("$root", "m.read", A, 16, "main"),
        ),
    ]
    async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:
        start = 0
        for name, records, expected in steps:
            sentinel, sentinel_event = room.sentinel()
            await produce(kafka_bootstrap, records + sentinel)
            deltas, start = await deltas_until_sentinel(sync, start, sentinel_event)
            assert merge_parts(deltas) == expected, name
        # MSC4102: a threaded and an unthreaded receipt of one user on one event.
        sentinel, sentinel_event = room.sentinel()
        clash = [room.receipt(B, "m.read", "$e3", 20, "main"), room.receipt(B, "m.read", "$e3", 21)]
        await produce(kafka_bootstrap, [*clash, *sentinel])
        deltas, start = await deltas_until_sentinel(sync, start, sentinel_event)
        # The clash may be folded in the sentinel's delta or in one before it: the last word
        # over all of them is the unthreaded receipt.
        assert merge_parts(deltas)["receipt"]["content"]["$e3"]["m.read"][B] == {"ts": 21}

        seqs = [d["seq"] for d in sync.values()]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "seq grows per delta"
        for delta in sync.values():
            assert set(delta) <= {"room_id", "seq", "ts", "receipt", "private", "account_data"}
            if "receipt" in delta:
                validate_receipt_event(delta["receipt"])
                assert "m.read.private" not in orjson.dumps(delta["receipt"]).decode()
            for owner, event in delta.get("private", {}).items():
                validate_receipt_event(event)
                users = {
                    u
                    for by_type in event["content"].values()
                    for u in by_type.get("m.read.private", {})
                }
                assert users == {owner}

    async with TopicReader(kafka_bootstrap, s.topic_dlq) as dlq:
        await dlq.wait_for(lambda r: len(r) >= 4, what="barrier + 3 DLQ records")
        codes = sorted(v["error"]["code"] for v in without_barriers(dlq.values()))
    assert codes == ["invalid_thread", "not_joined", "thread_mismatch"]


async def test_bad_records_go_to_the_dlq_while_good_ones_fold(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!dlq:hs1")
    key = room.key()
    good_receipt = room.receipt(A, "m.read", "$e1", 1)[2]
    bad: list[tuple[str, bytes | None, Any, str]] = [
        (s.topic_client, key, b"not json at all", "not_json"),
        (s.topic_client, key, b"\xff\xfe\x00binary", "not_json"),
        (s.topic_client, key, b"[1, 2]", "not_json"),  # JSON, but not an object
        (s.topic_client, key, {**good_receipt, "ts": "yesterday"}, "bad_shape"),
        (s.topic_client, key, {**good_receipt, "user_id": "alice"}, "bad_id"),
        (s.topic_client, key, {**good_receipt, "event_id": "$has space"}, "bad_id"),
        (s.topic_client, key, {**good_receipt, "receipt_type": "m.hidden"}, "bad_receipt_type"),
        (s.topic_client, key, {**good_receipt, "thread_id": ""}, "invalid_thread"),
        (s.topic_client, key, {**good_receipt, "pad": "x" * 70_000}, "too_large"),
        (s.topic_client, b"!other:hs1", good_receipt, "key_mismatch"),
        (
            s.topic_membership,
            key,
            {"room_id": room.room_id, "user_id": A, "membership": "dancing", "stream_pos": 1},
            "bad_shape",
        ),
        (
            s.topic_events,
            key,
            {
                "room_id": room.room_id,
                "event_id": "e-no-sigil",
                "sender": A,
                "stream_pos": 1,
                "origin_server_ts": 1,
            },
            "bad_id",
        ),
    ]
    # One user per good receipt: a delta keeps only the latest receipt of each slot.
    users = [f"@u{i}:hs1" for i in range(len(bad))]
    records: list[tuple[str, bytes | None, Any]] = [room.member(u) for u in users]
    for i, (topic, k, value, _) in enumerate(bad):
        records.append((topic, k, value))
        event_id = f"$good{i}"
        records += [room.event(event_id), room.receipt(users[i], "m.read", event_id, 100 + i)]
    await produce(kafka_bootstrap, records)

    async with TopicReader(kafka_bootstrap, s.topic_dlq) as dlq:
        await dlq.wait_for(lambda r: len(r) >= len(bad), what="every bad record")
        got = [(m.key.decode(), orjson.loads(m.value)) for m in dlq.records]
    assert sorted(v["error"]["code"] for _, v in got) == sorted(code for *_, code in bad)
    for key_topic, v in got:
        assert key_topic == v["topic"]
        assert v["error"]["message"]
        assert isinstance(v["offset"], int) and isinstance(v["partition"], int)
    by_code = {v["error"]["code"]: v for _, v in got}
    assert by_code["bad_receipt_type"]["value"] == orjson.dumps(bad[6][2]).decode()
    binary = next(v for _, v in got if v.get("value_encoding") == "base64")
    assert binary["value"] == "//4AYmluYXJ5"

    async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:
        await sync.wait_for(lambda r: _users(sync) >= set(users), what="every good receipt")
        seen = {e for v in sync.values() for e in v.get("receipt", {}).get("content", {})}
    assert seen == {f"$good{i}" for i in range(len(bad))}


async def test_receipt_waits_for_its_event_and_join_then_expires(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!held:hs1")
    late_joiner = "@late:hs1"
    await produce(
        kafka_bootstrap,
        [
            room.member(A),
            room.receipt(A, "m.read", "$late", 1),  # its event comes after it
            room.receipt(late_joiner, "m.read", "$e0", 2),  # its join comes after it
            room.receipt(A, "m.read.private", "$never", 3),  # its event never comes
        ],
    )
    async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:
        await produce(
            kafka_bootstrap, [room.event("$e0"), room.event("$late"), room.member(late_joiner)]
        )
        await sync.wait_for(
            lambda r: len(r) >= 1 and _users(sync) >= {A, late_joiner}, what="released receipts"
        )
        assert _users(sync) == {A, late_joiner}

    async with TopicReader(kafka_bootstrap, s.topic_dlq) as dlq:
        await dlq.wait_for(
            lambda r: len(r) >= 1, timeout=s.grace_period_s + 30, what="the expired receipt"
        )
        [expired] = dlq.values()
    assert expired["error"]["code"] == "unknown_event"
    assert orjson.loads(expired["value"])["event_id"] == "$never"


def _users(sync: TopicReader) -> set[str]:
    return {
        u
        for v in sync.values()
        for by_type in v.get("receipt", {}).get("content", {}).values()
        for u in by_type.get("m.read", {})
    }
