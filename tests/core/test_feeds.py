"""The feeds (core/feeds.py): read positions and history, case by case and as properties of
the whole fold."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from receipt_streams.adapters.effects import Router, Tally
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.feeds import (
    MERGED_TYPES,
    FeedOptions,
    PositionKey,
    further,
    position_move,
)
from receipt_streams.core.fold import Outcome, fold
from receipt_streams.core.processor import (
    FEDERATION_IN,
    HISTORY,
    READ_POSITIONS,
    Effect,
    Emit,
    Folded,
    Limits,
)
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.state import RoomState
from tests.core.harness import ROOM, T0, Harness
from tests.core.test_processor_federation import FedHarness
from tests.core.test_properties import (
    SETTINGS,
    SETUP,
    USERS,
    Op,
    any_op,
    apply,
    event_order,
    known_receipts,
    run,
)

A, B, C = "@a:hs1", "@b:hs1", "@c:hs2"  # hs1 is this server


def emits(effects: list[Effect], stream: str) -> list[Emit]:
    return [e for e in effects if isinstance(e, Emit) and e.stream == stream]


def positions(effects: list[Effect]) -> list[dict[str, Any]]:
    return [orjson.loads(e.value) for e in emits(effects, READ_POSITIONS) if e.value is not None]


def history(effects: list[Effect]) -> list[dict[str, Any]]:
    return [orjson.loads(e.value) for e in emits(effects, HISTORY) if e.value is not None]


def harness(**feeds: bool) -> Harness:
    h = Harness(Limits(server_name="hs1", feeds=FeedOptions(**feeds)))
    h.member(A)  # pos 1
    h.member(B)  # pos 2
    h.member(C)  # pos 3
    for n in range(1, 6):
        h.event(f"$e{n}")  # pos 3 + n, sent at T0 + 1000 n
        h.now += 1000
    h.event("$root")  # pos 9
    h.event("$t1", rel=("m.thread", "$root"))  # pos 10
    h.effects.clear()
    return h


@pytest.fixture
def h() -> Harness:
    return harness()


# --- read positions ----------------------------------------------------------------------


def test_read_and_private_merge_the_further_wins(h: Harness) -> None:
    first = h.receipt(A, "m.read", "$e2", ts=T0 + 1)
    assert positions(first) == [
        {
            "room_id": ROOM,
            "user_id": A,
            "thread_id": None,
            "event_id": "$e2",
            "stream_pos": 5,
            "ts": T0 + 1,
        }
    ]
    assert emits(first, READ_POSITIONS)[0].key == orjson.dumps([ROOM, A, None])
    # A private receipt further on moves the position; nothing says it was private.
    moved = positions(h.receipt(A, "m.read.private", "$e4", ts=T0 + 2))
    assert [(p["event_id"], p["stream_pos"]) for p in moved] == [("$e4", 7)]
    assert "receipt_type" not in moved[0]
    # The public receipt moving forward but staying behind the private one: no move.
    assert positions(h.receipt(A, "m.read", "$e3", ts=T0 + 3)) == []
    # Both on the same event: no move.
    assert positions(h.receipt(A, "m.read", "$e4", ts=T0 + 4)) == []
    # Past both: it moves again.
    assert [p["event_id"] for p in positions(h.receipt(A, "m.read", "$e5", ts=T0 + 5))] == ["$e5"]


def test_only_moves_are_emitted(h: Harness) -> None:
    h.receipt(A, "m.read", "$e3")
    assert positions(h.receipt(A, "m.read", "$e3", ts=T0 + 9)) == []  # same event
    assert positions(h.receipt(A, "m.read", "$e1")) == []  # older
    assert positions(h.receipt(A, "m.read.private", "$e2")) == []  # private behind public
    assert positions(h.receipt(A, "m.fully_read", "$e5")) == []  # not a receipt


def test_a_duplicate_record_adds_nothing_to_either_feed(h: Harness) -> None:
    value = h.receipt_value(A, "m.read", "$e3", ts=T0 + 7)
    first = h.send("receipts.client.v1", value)
    assert len(positions(first)) == 1 and len(history(first)) == 1
    again = h.send("receipts.client.v1", value)
    assert [f.outcome for f in again if isinstance(f, Folded)] == [Outcome.REPLAYED]
    assert emits(again, READ_POSITIONS) == [] and emits(again, HISTORY) == []


def test_threads_and_unthreaded_are_separate_positions(h: Harness) -> None:
    unthreaded = positions(h.receipt(A, "m.read", "$e5"))
    main = positions(h.receipt(A, "m.read.private", "$e1", thread_id="main"))
    thread = positions(h.receipt(A, "m.read", "$t1", thread_id="$root"))
    assert [(p["thread_id"], p["event_id"]) for p in unthreaded + main + thread] == [
        (None, "$e5"),
        ("main", "$e1"),
        ("$root", "$t1"),
    ]


def test_remote_users_have_no_read_position() -> None:
    f = FedHarness()
    for user in (A, C):
        f.h.member(user)
    f.h.event("$e1")
    routed = f.read(C, "$e1", 5)
    assert [x.outcome for x in routed if isinstance(x, Folded)] == [Outcome.APPLIED]
    assert emits(routed, READ_POSITIONS) == []
    # A remote user's client-topic receipt (a homeserver writing directly) neither.
    assert emits(f.h.receipt(C, "m.read.private", "$e1"), READ_POSITIONS) == []


def test_a_tombstone_is_the_key_with_no_value(h: Harness) -> None:
    emit = h.processor.read_position(PositionKey(ROOM, A, "main"), None)
    assert emit == Emit(READ_POSITIONS, orjson.dumps([ROOM, A, "main"]), None)


def test_feeds_can_be_turned_off() -> None:
    h = harness(read_positions=False, history=False)
    assert emits(h.receipt(A, "m.read", "$e3"), READ_POSITIONS) == []
    assert emits(h.receipt(A, "m.read", "$e4"), HISTORY) == []


# --- history -----------------------------------------------------------------------------


def test_history_has_the_previous_receipt_and_the_time_to_read(h: Harness) -> None:
    sent = h.processor.state.event(ROOM, "$e2")
    assert sent is not None and sent.origin_server_ts == T0 + 1000
    first = history(h.receipt(A, "m.read", "$e2", ts=T0 + 1500))
    assert first == [
        {
            "room_id": ROOM,
            "user_id": A,
            "receipt_type": "m.read",
            "thread_id": None,
            "event_id": "$e2",
            "stream_pos": 5,
            "ts": T0 + 1500,
            "previous_event_id": None,
            "previous_stream_pos": None,
            "previous_ts": None,
            "origin_server_ts": T0 + 1000,
            "time_to_read_ms": 500,
            "source": "client",
        }
    ]
    second = history(h.receipt(A, "m.read", "$e4", ts=T0 + 9000, thread_id=None))
    assert len(second) == 1
    assert (second[0]["previous_event_id"], second[0]["previous_stream_pos"]) == ("$e2", 5)
    assert second[0]["previous_ts"] == T0 + 1500
    assert second[0]["time_to_read_ms"] == 9000 - 3000
    assert history(h.receipt(A, "m.read", "$e1", ts=T0 + 9999)) == []  # not accepted


def test_private_and_fully_read_stay_out_unless_opted_in(h: Harness) -> None:
    assert history(h.receipt(A, "m.read.private", "$e2")) == []
    assert history(h.receipt(A, "m.fully_read", "$e2")) == []
    opted = harness(history_private=True, history_fully_read=True)
    types = [
        r["receipt_type"]
        for t in ("m.read.private", "m.fully_read", "m.read")
        for r in history(opted.receipt(A, t, "$e2"))
    ]
    assert types == ["m.read.private", "m.fully_read", "m.read"]


def test_remote_history_says_federation_and_may_not_know_the_event() -> None:
    f = FedHarness()
    for user in (A, C):
        f.h.member(user)
    f.h.event("$e1")  # pos 3, sent at T0
    unknown = history(f.read(C, "$later", T0 + 50, extra=1))
    assert unknown[0]["source"] == "federation"
    assert (unknown[0]["stream_pos"], unknown[0]["origin_server_ts"]) == (None, None)
    assert unknown[0]["time_to_read_ms"] is None
    known = history(f.read(C, "$e1", T0 + 70))  # the newer arrival wins an unknown position
    assert (known[0]["stream_pos"], known[0]["time_to_read_ms"]) == (3, 70)
    assert known[0]["previous_event_id"] == "$later"


def test_events_indexed_before_their_ts_was_kept_still_decode() -> None:
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    store[orjson.dumps(["e", ROOM, "$old"])] = orjson.dumps({"stream_pos": 1, "sender": A})
    old = state.event(ROOM, "$old")
    assert old is not None and old.origin_server_ts is None


# --- the router: feeds go to the room's partition ----------------------------------------


def test_feed_records_go_to_the_input_partition() -> None:
    s = Settings(topic_read_positions="rp", topic_history="hist")
    h = harness()
    router = Router(h.processor, s)
    effects = router.handlers[s.topic_client](
        h.source(s.topic_client, orjson.dumps(h.receipt_value(A, "m.read", "$e3")), b"!r:hs1"),
        h.now,
    )
    effects.append(Emit(FEDERATION_IN, b"!r:hs1", b"{}"))
    outputs: list[Any] = []
    origin = Source(s.topic_client, 5, 0, None, None)  # the input record
    router.carry_out(effects, "client", outputs, Tally(), origin)
    assert [(topic, partition) for topic, _, _, partition in outputs] == [
        ("hist", 5),
        ("rp", 5),
        (s.topic_outbox, None),  # keyed by room, partitioned by its key, as before
        (s.topic_federation_in, None),
    ]


# --- properties --------------------------------------------------------------------------


def test_further_is_the_folds_order() -> None:
    a, b = Receipt("$a", 3, 1, {}), Receipt("$b", 4, 1, {})
    assert further(a, b) is b and further(b, a) is b and further(a, None) is a
    assert further(Receipt("$x", None, 1, {}), a) is a
    assert fold(a, b) is Outcome.APPLIED and fold(b, a) is Outcome.UNCHANGED
    assert position_move(None, b, a) is b and position_move(a, b, Receipt("$c", 9, 1, {})) is None


def merged_table(h: Harness, local: str = "hs1") -> dict[PositionKey, tuple[str, int]]:
    """The read positions the table gives: per local slot, the event of the further of
    m.read and m.read.private (on the same event, either: the position is the same)."""
    table = h.table()
    out: dict[PositionKey, tuple[str, int]] = {}
    for key in table:
        if key.receipt_type == "m.fully_read" or not key.user_id.endswith(f":{local}"):
            continue
        best = further(*slots(table, PositionKey.of(key)))
        if best is not None and best.stream_pos is not None:
            out[PositionKey.of(key)] = (best.event_id, best.stream_pos)
    return out


def slots(table: dict[ReceiptKey, Receipt], pk: PositionKey) -> list[Receipt | None]:
    return [table.get(ReceiptKey(pk.room_id, pk.user_id, t, pk.thread_id)) for t in MERGED_TYPES]


LIMITS = dict(grace_ms=10_000, held_per_dep=3, server_name="hs1")

# Random inputs of every kind; or every user joined and every event known first, so that
# most receipts fold.
scripts = st.one_of(
    st.lists(any_op, min_size=5, max_size=60).map(lambda ops: SETUP + ops),
    st.builds(
        lambda order, ops: (
            [("member", u, "join") for u in USERS] + [("event", e) for e in order] + ops
        ),
        event_order(),
        known_receipts,
    ),
)


@SETTINGS
@given(scripts)
def test_read_positions_move_exactly_when_the_merged_table_moves(ops: list[Op]) -> None:
    h = Harness(Limits(**LIMITS))
    feed: dict[PositionKey, tuple[str, int]] = {}
    for op in ops:
        before, seen = merged_table(h), len(h.effects)
        apply(h, op)
        after = merged_table(h)
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        emitted: dict[PositionKey, tuple[str, int]] = {}
        for emit in emits(h.effects[seen:], READ_POSITIONS):
            assert emit.value is not None
            v = orjson.loads(emit.value)
            key = PositionKey(v["room_id"], v["user_id"], v["thread_id"])
            assert emit.key == key.encode()
            assert v["user_id"].endswith(":hs1")  # local users only
            if key in feed:
                assert v["stream_pos"] > feed[key][1]  # forward only
            feed[key] = emitted[key] = (v["event_id"], v["stream_pos"])
            # The ts of the receipt that put it there (now in the table).
            at = [r for r in slots(h.table(), key) if r and r.event_id == v["event_id"]]
            assert v["ts"] in {r.ts for r in at}
        assert emitted == changed  # emitted exactly on a move, with the merged position
        if emitted:
            event("read position moved")
    assert feed == merged_table(h)


@SETTINGS
@given(scripts, st.booleans(), st.booleans())
def test_history_is_every_accepted_change_once(
    ops: list[Op], private: bool, fully_read: bool
) -> None:
    options = FeedOptions(history_private=private, history_fully_read=fully_read)
    h = run(ops, Limits(**LIMITS, feeds=options))
    wanted = (
        {"m.read"}
        | ({"m.read.private"} if private else set())
        | ({"m.fully_read"} if fully_read else set())
    )
    applied = [
        f
        for f in h.effects
        if isinstance(f, Folded) and f.outcome is Outcome.APPLIED and f.key.receipt_type in wanted
    ]
    records = history(h.effects)
    assert len(records) == len(applied)
    before: dict[ReceiptKey, Receipt] = {}
    for f, r in zip(applied, records, strict=True):
        key = ReceiptKey(r["room_id"], r["user_id"], r["receipt_type"], r["thread_id"])
        assert key == f.key
        assert (r["event_id"], r["stream_pos"], r["ts"]) == (
            f.receipt.event_id,
            f.receipt.stream_pos,
            f.receipt.ts,
        )
        prev = before.get(key)
        assert r["previous_event_id"] == (prev.event_id if prev else None)
        assert r["previous_ts"] == (prev.ts if prev else None)
        info = h.processor.state.event(ROOM, f.receipt.event_id)
        assert info is not None  # client receipts fold only on known events
        assert info.origin_server_ts is not None
        assert r["origin_server_ts"] == info.origin_server_ts
        assert r["time_to_read_ms"] == f.receipt.ts - info.origin_server_ts
        assert r["source"] == "client"
        before[key] = f.receipt
    # Replayed from the start, the history is the same.
    assert history(run(ops, Limits(**LIMITS, feeds=options)).effects) == records
    if records:
        event("history written")
    assert set(USERS) >= {r["user_id"] for r in records}
