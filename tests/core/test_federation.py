"""Federation rules without a Processor (CONTRACT §4.6-7): splitting an inbound `m.receipt`
EDU into checked entries, and the outbound queue (coalescing, one EDU per destination and
thread, never to the origin, pacing of big rooms), every EDU checked against the spec."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.federation import (
    OutboundQueue,
    RemoteReceipt,
    edu_contents,
    outbox_record,
    split_edu,
)
from receipt_streams.core.reasons import Reason
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from tests.support.spec import validate_federation_receipt_edu

ROOM, ROOM2 = "!r:hs1", "!q:hs1"
ORIGIN = "hs2"
TS = 1_700_000_000_000


def entry(event_id: str = "$e1", **data: Any) -> dict[str, Any]:
    return {"event_ids": [event_id], "data": {"ts": TS, **data}}


def reads(users: dict[str, Any], room: str = ROOM) -> dict[str, Any]:
    return {room: {"m.read": users}}


def reasons(content: dict[str, Any], origin: str = ORIGIN) -> list[str]:
    return [str(r.rejection.reason) for r in split_edu(origin, content)[1]]


def check_edu(edu: dict[str, Any]) -> None:
    """The `federation.edus.v1` shape, its EDU part valid by the spec's own schema."""
    assert set(edu) == {"destination", "origin", "edu_type", "content"}
    validate_federation_receipt_edu({"edu_type": edu["edu_type"], "content": edu["content"]})


# --- inbound: split_edu ----------------------------------------------------------------


def test_good_entry_is_accepted_as_sent() -> None:
    accepted, rejected = split_edu(ORIGIN, reads({"@u:hs2": entry(extra={"k": [1]})}))
    assert rejected == []
    assert accepted == [
        RemoteReceipt(ORIGIN, ROOM, "@u:hs2", "$e1", {"ts": TS, "extra": {"k": [1]}})
    ]
    (r,) = accepted
    assert r.key == ReceiptKey(ROOM, "@u:hs2", "m.read", None)
    # The remote ts and data, kept as sent; the position is the caller's knowledge.
    assert r.receipt(None) == Receipt("$e1", None, TS, {"ts": TS, "extra": {"k": [1]}})
    assert RemoteReceipt.decode(r.encode()) == r


def test_forged_entry_is_rejected_and_the_good_one_kept() -> None:
    accepted, rejected = split_edu(
        ORIGIN, reads({"@u:hs2": entry(), "@evil:hs3": entry(), "@me:hs1": entry()})
    )
    assert [r.user_id for r in accepted] == ["@u:hs2"]
    assert [str(r.rejection.reason) for r in rejected] == ["origin_mismatch"] * 2
    assert rejected[0].path == (ROOM, "m.read", "@evil:hs3")
    assert rejected[0].entry == entry()  # the part as sent


def test_server_part_must_equal_origin_exactly() -> None:
    assert reasons(reads({"@u:hs2:8448": entry()})) == ["origin_mismatch"]
    assert reasons(reads({"@u:HS2": entry()})) == ["origin_mismatch"]
    assert reasons(reads({"@u:hs2:8448": entry()}), origin="hs2:8448") == []


@pytest.mark.parametrize("receipt_type", ["m.read.private", "m.fully_read", "m.foo", ""])
def test_other_receipt_types_are_rejected_and_the_rest_kept(receipt_type: str) -> None:
    content = {ROOM: {receipt_type: {"@u:hs2": entry()}, "m.read": {"@u:hs2": entry("$e2")}}}
    accepted, rejected = split_edu(ORIGIN, content)
    assert [(r.user_id, r.event_id) for r in accepted] == [("@u:hs2", "$e2")]
    assert [r.rejection.reason for r in rejected] == [Reason.BAD_RECEIPT_TYPE]


@pytest.mark.parametrize(
    "bad",
    [
        {"event_ids": [], "data": {"ts": TS}},
        {"event_ids": ["$e1", "$e2"], "data": {"ts": TS}},
        {"event_ids": "$e1", "data": {"ts": TS}},
        {"data": {"ts": TS}},
        {"event_ids": ["$e1"]},
        {"event_ids": ["$e1"], "data": None},
        {"event_ids": ["$e1"], "data": [TS]},
        {"event_ids": ["$e1"], "data": {}},
        {"event_ids": ["$e1"], "data": {"ts": str(TS)}},
        {"event_ids": ["$e1"], "data": {"ts": float(TS)}},
        {"event_ids": ["$e1"], "data": {"ts": 1.5}},
        {"event_ids": ["$e1"], "data": {"ts": True}},
        {"event_ids": ["$e1"], "data": {"ts": -1}},
        {"event_ids": ["$e1"], "data": {"ts": None}},
        ["$e1"],
        "$e1",
        None,
        TS,
    ],
)
def test_bad_shapes_are_rejected_one_by_one(bad: Any) -> None:
    content = reads({"@bad:hs2": bad, "@good:hs2": entry()})
    accepted, rejected = split_edu(ORIGIN, content)
    assert [r.user_id for r in accepted] == ["@good:hs2"]
    assert [r.rejection.reason for r in rejected] == [Reason.BAD_SHAPE]


def test_ts_beyond_int64_is_a_bad_shape() -> None:
    """The spec's `ts` is an int64; bigger ints cannot be kept (nor encoded by orjson)."""
    for ts in (2**63, 2**64, 10**30):
        accepted, rejected = split_edu(
            ORIGIN, reads({"@bad:hs2": {"event_ids": ["$e1"], "data": {"ts": ts}}})
        )
        assert accepted == []
        assert [r.rejection.reason for r in rejected] == [Reason.BAD_SHAPE]
    (ok,), _ = split_edu(
        ORIGIN, reads({"@u:hs2": {"event_ids": ["$e"], "data": {"ts": 2**63 - 1}}})
    )
    assert RemoteReceipt.decode(ok.encode()) == ok


def test_unencodable_extra_data_is_a_bad_shape_not_a_crash() -> None:
    """Every accepted entry must survive its trip to the room's partition as JSON."""
    content = reads({"@bad:hs2": entry(big=2**70), "@good:hs2": entry()})
    accepted, rejected = split_edu(ORIGIN, content)
    assert [r.user_id for r in accepted] == ["@good:hs2"]
    assert [r.rejection.reason for r in rejected] == [Reason.BAD_SHAPE]
    for r in accepted:
        r.encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (reads({"@u:hs2": entry()}, room="r:hs1"), Reason.BAD_ID),
        (reads({"@u:hs2": entry()}, room="!r:bad server"), Reason.BAD_ID),
        (reads({"u:hs2": entry()}), Reason.BAD_ID),
        (reads({"@u u:hs2": entry()}), Reason.BAD_ID),
        (reads({"@u:hs2": entry("e1")}), Reason.BAD_ID),
        (reads({"@u:hs2": entry("$e 1")}), Reason.BAD_ID),
        (reads({"@u:hs2": {"event_ids": [7], "data": {"ts": TS}}}), Reason.BAD_ID),
        ({ROOM: ["m.read"]}, Reason.BAD_SHAPE),
        ({ROOM: {"m.read": ["@u:hs2"]}}, Reason.BAD_SHAPE),
    ],
)
def test_bad_ids_and_containers_are_rejected(content: dict[str, Any], reason: Reason) -> None:
    good = reads({"@good:hs2": entry()}, room=ROOM2)
    accepted, rejected = split_edu(ORIGIN, {**content, **good})
    assert [(r.room_id, r.user_id) for r in accepted] == [(ROOM2, "@good:hs2")]
    assert [r.rejection.reason for r in rejected] == [reason]


@pytest.mark.parametrize("thread", [1, 0, None, {"id": "$t"}, ["$t"], True, ""])
def test_non_string_thread_id_means_unthreaded(thread: Any) -> None:
    (r,), _ = split_edu(ORIGIN, reads({"@u:hs2": entry(thread_id=thread, x=1)}))
    assert r.key.thread_id is None
    assert r.data == {"ts": TS, "x": 1}  # removed, so the m.receipt event stays valid


@pytest.mark.parametrize("thread", ["main", "$root"])
def test_string_thread_id_is_a_threaded_slot(thread: str) -> None:
    (r,), _ = split_edu(ORIGIN, reads({"@u:hs2": entry(thread_id=thread)}))
    assert r.key == ReceiptKey(ROOM, "@u:hs2", "m.read", thread)
    assert r.data == {"ts": TS, "thread_id": thread}


def test_sent_content_is_not_mutated() -> None:
    content = reads({"@u:hs2": entry(thread_id=3)})
    before = orjson.dumps(content)
    split_edu(ORIGIN, content)
    assert orjson.dumps(content) == before


# --- outbound: records and queue -------------------------------------------------------

HS = ["hs2", "hs3", "hs4"]


def record(
    user: str = "@a:hs1",
    event_id: str = "$e1",
    *,
    thread: str | None = None,
    ts: int = TS,
    room: str = ROOM,
    destinations: list[str] | None = None,
) -> dict[str, Any]:
    key = ReceiptKey(room, user, "m.read", thread)
    value = Receipt(event_id, 1, ts, client_data(ts, thread))
    return orjson.loads(outbox_record(key, value, HS if destinations is None else destinations))


def test_outbox_record_shape() -> None:
    r = record(thread="$root", destinations=["hs4", "hs2"])
    assert r == {
        "room_id": ROOM,
        "user_id": "@a:hs1",
        "thread_id": "$root",
        "event_id": "$e1",
        "data": {"ts": TS, "thread_id": "$root"},
        "destinations": ["hs2", "hs4"],
    }


def test_one_edu_per_destination_never_to_origin() -> None:
    q = OutboundQueue("hs1")
    q.add(record(destinations=["hs1", *HS]), source=0)
    q.add(record("@b:hs1", "$e2"), source=1)
    edus = q.flush(TS)
    assert sorted(e["destination"] for e in edus) == HS
    for edu in edus:
        check_edu(edu)
        assert edu["origin"] == "hs1"
        assert edu["content"] == {
            ROOM: {
                "m.read": {
                    "@a:hs1": {"event_ids": ["$e1"], "data": {"ts": TS}},
                    "@b:hs1": {"event_ids": ["$e2"], "data": {"ts": TS}},
                }
            }
        }
    assert q.flush(TS + 1) == []
    assert q.pending == {} and q.pending_sources() == []


def test_a_burst_coalesces_to_the_latest() -> None:
    q = OutboundQueue("hs1")
    for i in range(50):
        q.add(record(event_id=f"$e{i}", ts=TS + i), source=i)
    assert sorted(q.pending_sources()) == [49] * len(HS)
    edus = q.flush(TS)
    assert len(edus) == len(HS)
    for edu in edus:
        check_edu(edu)
        assert edu["content"] == {
            ROOM: {"m.read": {"@a:hs1": {"event_ids": ["$e49"], "data": {"ts": TS + 49}}}}
        }


def test_same_user_in_two_threads_needs_two_edus() -> None:
    q = OutboundQueue("hs1")
    q.add(record(event_id="$t1", thread="$root", destinations=["hs2"]))
    q.add(record(event_id="$m1", thread="main", destinations=["hs2"]))
    q.add(record(event_id="$m0", destinations=["hs2"]))  # unthreaded: a third slot
    q.add(record("@b:hs1", "$m1", destinations=["hs2"]))
    edus = q.flush(TS)
    assert len(edus) == 3 and {e["destination"] for e in edus} == {"hs2"}
    seen: dict[str | None, str] = {}
    for edu in edus:
        check_edu(edu)
        users = edu["content"][ROOM]["m.read"]
        a = users["@a:hs1"]  # one entry for the user in each EDU
        seen[a["data"].get("thread_id")] = a["event_ids"][0]
    assert seen == {None: "$m0", "main": "$m1", "$root": "$t1"}
    # @b rides along in exactly one of them.
    assert sum("@b:hs1" in e["content"][ROOM]["m.read"] for e in edus) == 1


def test_rooms_share_an_edu() -> None:
    q = OutboundQueue("hs1")
    q.add(record(room=ROOM, destinations=["hs2"]))
    q.add(record(room=ROOM2, destinations=["hs2"]))
    (edu,) = q.flush(TS)
    check_edu(edu)
    assert set(edu["content"]) == {ROOM, ROOM2}


def test_edu_contents_directly() -> None:
    entries = {
        (ROOM, "@a:hs1", None): ("$e1", {"ts": 1}, None),
        (ROOM, "@a:hs1", "$t"): ("$e2", {"ts": 2, "thread_id": "$t"}, None),
    }
    contents = edu_contents(entries)
    assert contents == [
        {ROOM: {"m.read": {"@a:hs1": {"event_ids": ["$e1"], "data": {"ts": 1}}}}},
        {
            ROOM: {
                "m.read": {"@a:hs1": {"event_ids": ["$e2"], "data": {"ts": 2, "thread_id": "$t"}}}
            }
        },
    ]
    assert edu_contents({}) == []


def big_room(n: int = 10) -> list[str]:
    return [f"hs{i}" for i in range(2, 2 + n)]


def test_big_room_is_flushed_at_most_once_per_interval() -> None:
    q = OutboundQueue("hs1", large_room_servers=10, large_room_interval_ms=200)
    flushes: list[int] = []
    for t in range(0, 1_000, 10):  # a receipt every 10 ms, a flush every 10 ms
        q.add(record(event_id=f"$e{t}", ts=t, destinations=big_room()), source=t)
        edus = q.flush(t)
        if edus:
            flushes.append(t)
            assert len(edus) == 10
            for edu in edus:
                check_edu(edu)
                assert edu["content"][ROOM]["m.read"]["@a:hs1"]["event_ids"] == [f"$e{t}"]
    assert flushes == [0, 200, 400, 600, 800]
    # What is paced stays pending (so its source is not committed), then goes out.
    assert set(q.pending_sources()) == {990}
    assert q.flush(999) == []
    assert len(q.flush(1_000)) == 10
    assert q.pending_sources() == []


def test_big_room_pacing_does_not_hold_small_rooms_back() -> None:
    q = OutboundQueue("hs1", large_room_servers=10, large_room_interval_ms=200)
    q.add(record(room=ROOM, destinations=big_room()), source="big0")
    assert len(q.flush(0)) == 10
    q.add(record(room=ROOM, event_id="$e2", destinations=big_room()), source="big1")
    q.add(record(room=ROOM2, destinations=["hs2"]), source="small")
    (edu,) = q.flush(50)
    assert edu["destination"] == "hs2" and set(edu["content"]) == {ROOM2}
    assert q.pending_sources() == ["big1"] * 10
    edus = q.flush(200)
    assert len(edus) == 10 and all(set(e["content"]) == {ROOM} for e in edus)


def test_small_room_is_flushed_every_time() -> None:
    q = OutboundQueue("hs1", large_room_servers=10, large_room_interval_ms=200)
    for t in range(5):
        q.add(record(event_id=f"$e{t}", destinations=big_room(9)))
        assert len(q.flush(t)) == 9


# --- property: coalescing never loses the newest ----------------------------------------

ROOMS = [ROOM, ROOM2]
USERS = ["@a:hs1", "@b:hs1"]
THREADS = [None, "main", "$root"]
SERVERS = ["hs1", "hs2", "hs3", "hs4"]

add_op = st.tuples(
    st.just("add"),
    st.sampled_from(ROOMS),
    st.sampled_from(USERS),
    st.sampled_from(THREADS),
    st.sampled_from(["$e1", "$e2", "$e3"]),
    st.lists(st.sampled_from(SERVERS), unique=True),
)
flush_op = st.tuples(st.just("flush"), st.integers(0, 150))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(add_op, add_op, flush_op), max_size=40))
def test_coalescing_never_loses_the_newest(ops: list[tuple[Any, ...]]) -> None:
    # Rooms with >= 2 destinations are paced, so pacing is exercised too.
    q = OutboundQueue("hs1", large_room_servers=2, large_room_interval_ms=100)
    expected: dict[tuple[str, str, str, str | None], tuple[str, dict[str, Any]]] = {}
    edus: list[dict[str, Any]] = []
    now = 0
    for n, op in enumerate(ops):
        if op[0] == "flush":
            now += op[1]
            edus += q.flush(now)
            continue
        _, room, user, thread, event_id, destinations = op
        r = record(user, event_id, thread=thread, ts=n, room=room, destinations=destinations)
        q.add(r, source=n)
        for d in destinations:
            if d != "hs1":
                expected[(d, room, user, thread)] = (event_id, r["data"])
    edus += q.flush(now + 100)  # every room is due again
    assert q.pending == {} and q.pending_sources() == []
    actual: dict[tuple[str, str, str, str | None], tuple[str, dict[str, Any]]] = {}
    for edu in edus:
        check_edu(edu)
        assert edu["destination"] != "hs1"
        for room, by_type in edu["content"].items():
            for user, e in by_type["m.read"].items():
                slot = (edu["destination"], room, user, e["data"].get("thread_id"))
                actual[slot] = (e["event_ids"][0], e["data"])
    assert actual == expected
