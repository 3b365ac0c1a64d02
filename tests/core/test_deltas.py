"""Per-room sync deltas: shapes, MSC4102, batching, and the consumer's view (CONTRACT §3-4)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.deltas import (
    apply_delta,
    build_delta,
    plan_deltas,
    seen_by,
    table_view,
)
from receipt_streams.core.models import SyncDelta
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from tests.support.spec import receipt_event_errors, validate_receipt_event

ROOM = "!r:hs1"
A, B, C = "@a:hs1", "@b:hs2", "@c:hs1"


def k(
    user: str, receipt_type: str = "m.read", thread: str | None = None, room: str = ROOM
) -> ReceiptKey:
    return ReceiptKey(room, user, receipt_type, thread)


def v(event_id: str, ts: int, thread: str | None = None, pos: int | None = 1) -> Receipt:
    return Receipt(event_id, pos, ts, client_data(ts, thread))


def check_spec(delta: dict[str, Any]) -> None:
    """Every m.receipt event of a delta validates against the spec; the delta its model."""
    SyncDelta.model_validate(delta)
    if "receipt" in delta:
        validate_receipt_event(delta["receipt"])
    for owner, event in delta.get("private", {}).items():
        validate_receipt_event(event)
        for by_type in event["content"].values():
            assert set(by_type) == {"m.read.private"}
            assert all(set(users) == {owner} for users in by_type.values())
    for part in ("receipt", "private", "account_data"):
        assert delta.get(part, True), f"empty {part} must be left out"


def test_spec_helper_rejects_bad_events() -> None:
    assert receipt_event_errors({"type": "m.receipt", "content": {}}) == []
    assert receipt_event_errors({"type": "m.receipt", "content": {"not-an-event": {}}})
    assert receipt_event_errors(
        {"type": "m.receipt", "content": {"$e": {"m.read": {"@a:hs1": {"ts": "1"}}}}}
    )
    assert receipt_event_errors(
        {"type": "m.receipt", "content": {"$e": {"m.read": {"@a:hs1": {"ts": 1, "thread_id": 5}}}}}
    )
    assert receipt_event_errors({"type": "m.typing", "content": {}})
    assert receipt_event_errors({"content": {}})  # `type` required (via the core event $ref)


def test_empty_batch_is_no_delta() -> None:
    assert build_delta(ROOM, 1, 2, []) is None
    assert plan_deltas([], 5) == []


def test_tombstones_are_removals_public_for_all_private_for_the_owner() -> None:
    """A purge or an erasure: removed slots reach a consumer's view, private ones only in
    their owner's part of the delta, and the view then equals the table's."""
    private, fully = k(B, "m.read.private"), k(B, "m.fully_read")
    threaded = k(A, thread="main")
    log = [
        (0, k(A).encode(), v("$e", 1).encode()),
        (1, threaded.encode(), Receipt("$e", 1, 1, {"ts": 1, "thread_id": "main"}).encode()),
        (2, private.encode(), v("$p", 2).encode()),
        (3, fully.encode(), v("$f", 3).encode()),
        (4, k(B).encode(), v("$b", 4).encode()),
    ]
    view: dict = {}
    for delta in plan_deltas(log, 0):
        apply_delta(view, delta)
    tombstones = [
        (5 + i, key.encode(), None) for i, key in enumerate((k(A), threaded, private, fully))
    ]
    [delta] = plan_deltas(tombstones, 9)
    SyncDelta.model_validate(delta)
    assert delta == {
        "room_id": ROOM,
        "seq": 8,
        "ts": 9,
        "removed": [
            {"user_id": A, "receipt_type": "m.read", "thread_id": None},
            {"user_id": A, "receipt_type": "m.read", "thread_id": "main"},
        ],
        "removed_private": {
            B: [
                {"receipt_type": "m.read.private", "thread_id": None},
                {"receipt_type": "m.fully_read", "thread_id": None},
            ]
        },
    }
    apply_delta(view, delta)
    assert view == table_view([(k(B), v("$b", 4))])
    apply_delta(view, delta)  # redelivered: nothing changes
    assert view == table_view([(k(B), v("$b", 4))])
    # Set then removed within one window: only the removal; removed then set: only the set.
    [delta] = plan_deltas([(10, k(C).encode(), v("$c", 1).encode()), (11, k(C).encode(), None)], 0)
    assert "receipt" not in delta and delta["removed"][0]["user_id"] == C
    [delta] = plan_deltas([(12, k(C).encode(), None), (13, k(C).encode(), v("$c", 1).encode())], 0)
    assert "removed" not in delta and delta["receipt"]["content"] == {
        "$c": {"m.read": {C: {"ts": 1}}}
    }


def test_public_receipt_only() -> None:
    delta = build_delta(ROOM, 7, 99, [(k(A), v("$e", 5))])
    assert delta == {
        "room_id": ROOM,
        "seq": 7,
        "ts": 99,
        "receipt": {"type": "m.receipt", "content": {"$e": {"m.read": {A: {"ts": 5}}}}},
    }
    check_spec(delta)


def test_private_receipts_go_to_their_owner_only() -> None:
    delta = build_delta(
        ROOM,
        1,
        1,
        [
            (k(A, "m.read.private"), v("$e1", 1)),
            (k(B, "m.read.private", "main"), v("$e2", 2, "main")),
        ],
    )
    assert delta == {
        "room_id": ROOM,
        "seq": 1,
        "ts": 1,
        "private": {
            A: {"type": "m.receipt", "content": {"$e1": {"m.read.private": {A: {"ts": 1}}}}},
            B: {
                "type": "m.receipt",
                "content": {"$e2": {"m.read.private": {B: {"ts": 2, "thread_id": "main"}}}},
            },
        },
    }
    check_spec(delta)


def test_fully_read_is_account_data_only() -> None:
    delta = build_delta(ROOM, 1, 1, [(k(A, "m.fully_read"), v("$e1", 1))])
    assert delta == {
        "room_id": ROOM,
        "seq": 1,
        "ts": 1,
        "account_data": {A: {"type": "m.fully_read", "content": {"event_id": "$e1"}}},
    }
    check_spec(delta)


def test_all_parts_together() -> None:
    delta = build_delta(
        ROOM,
        3,
        4,
        [
            (k(A), v("$e1", 1)),
            (k(A, "m.read.private"), v("$e2", 2)),
            (k(A, "m.fully_read"), v("$e3", 3)),
            (k(B), v("$e1", 4)),
        ],
    )
    assert delta is not None
    assert delta["receipt"]["content"] == {"$e1": {"m.read": {A: {"ts": 1}, B: {"ts": 4}}}}
    assert delta["private"] == {
        A: {"type": "m.receipt", "content": {"$e2": {"m.read.private": {A: {"ts": 2}}}}}
    }
    assert delta["account_data"] == {A: {"type": "m.fully_read", "content": {"event_id": "$e3"}}}
    check_spec(delta)


def test_latest_per_key_wins_in_a_batch() -> None:
    delta = build_delta(
        ROOM,
        1,
        1,
        [
            (k(A), v("$e1", 1)),
            (k(B), v("$e1", 2)),
            (k(A), v("$e2", 3)),
            (k(A, "m.fully_read"), v("$e1", 4)),
            (k(A, "m.fully_read"), v("$e2", 5)),
        ],
    )
    assert delta is not None
    assert delta["receipt"]["content"] == {
        "$e1": {"m.read": {B: {"ts": 2}}},
        "$e2": {"m.read": {A: {"ts": 3}}},
    }
    assert delta["account_data"][A]["content"] == {"event_id": "$e2"}
    check_spec(delta)


@pytest.mark.parametrize("unthreaded_first", [True, False])
def test_msc4102_unthreaded_wins_on_a_clash(unthreaded_first: bool) -> None:
    unthreaded = (k(A), v("$e", 10))
    threaded = (k(A, thread="main"), v("$e", 20, "main"))
    changes = [unthreaded, threaded] if unthreaded_first else [threaded, unthreaded]
    delta = build_delta(ROOM, 1, 1, changes)
    assert delta is not None
    assert delta["receipt"]["content"] == {"$e": {"m.read": {A: {"ts": 10}}}}
    check_spec(delta)


@pytest.mark.parametrize("unthreaded_first", [True, False])
def test_msc4102_for_private_receipts(unthreaded_first: bool) -> None:
    unthreaded = (k(A, "m.read.private"), v("$e", 10))
    threaded = (k(A, "m.read.private", "$root"), v("$e", 20, "$root"))
    changes = [unthreaded, threaded] if unthreaded_first else [threaded, unthreaded]
    delta = build_delta(ROOM, 1, 1, changes)
    assert delta is not None
    assert delta["private"][A]["content"] == {"$e": {"m.read.private": {A: {"ts": 10}}}}


def test_no_clash_across_users_events_or_types() -> None:
    delta = build_delta(
        ROOM,
        1,
        1,
        [
            (k(A), v("$e", 1)),
            (k(B, thread="main"), v("$e", 2, "main")),  # another user
            (k(A, thread="main"), v("$f", 3, "main")),  # another event
            (k(A, "m.read.private", "main"), v("$e", 4, "main")),  # another type
        ],
    )
    assert delta is not None
    assert delta["receipt"]["content"] == {
        "$e": {"m.read": {A: {"ts": 1}, B: {"ts": 2, "thread_id": "main"}}},
        "$f": {"m.read": {A: {"ts": 3, "thread_id": "main"}}},
    }
    assert delta["private"][A]["content"] == {
        "$e": {"m.read.private": {A: {"ts": 4, "thread_id": "main"}}}
    }


def test_remote_extras_are_kept_as_sent() -> None:
    value = Receipt("$e", None, 5, {"ts": 5, "com.example.extra": {"x": [1]}})
    delta = build_delta(ROOM, 1, 1, [(k(B), value)])
    assert delta is not None
    assert delta["receipt"]["content"]["$e"]["m.read"][B] == {
        "ts": 5,
        "com.example.extra": {"x": [1]},
    }
    check_spec(delta)


def test_change_of_another_room_is_refused() -> None:
    with pytest.raises(ValueError, match="!other:hs1"):
        build_delta(ROOM, 1, 1, [(k(A, room="!other:hs1"), v("$e", 1))])


def test_plan_deltas_one_per_room_with_max_offset_as_seq() -> None:
    other = "!other:hs1"
    records = [
        (10, k(A).encode(), v("$e1", 1).encode()),
        (11, k(A, room=other).encode(), v("$x", 2).encode()),
        (12, k(B).encode(), v("$e1", 3).encode()),
        (13, k(B, room=other).encode(), None),  # tombstone: a removal, in the seq
        (14, k(A).encode(), v("$e2", 4).encode()),
    ]
    deltas = {d["room_id"]: d for d in plan_deltas(records, now_ms=777)}
    assert set(deltas) == {ROOM, other}
    assert deltas[ROOM]["seq"] == 14 and deltas[other]["seq"] == 13
    assert deltas[other]["removed"] == [{"user_id": B, "receipt_type": "m.read", "thread_id": None}]
    assert all(d["ts"] == 777 for d in deltas.values())
    assert deltas[ROOM]["receipt"]["content"] == {
        "$e1": {"m.read": {B: {"ts": 3}}},
        "$e2": {"m.read": {A: {"ts": 4}}},
    }
    for delta in deltas.values():
        check_spec(delta)


def test_apply_delta_and_table_view() -> None:
    entries = [
        (k(A), v("$e1", 1)),
        (k(A, thread="$root"), v("$t1", 2, "$root")),
        (k(A, "m.read.private"), v("$e2", 3)),
        (k(B, "m.fully_read"), v("$e3", 4)),
    ]
    expected = {
        (A, "m.read", None): ("$e1", {"ts": 1}),
        (A, "m.read", "$root"): ("$t1", {"ts": 2, "thread_id": "$root"}),
        (A, "m.read.private", None): ("$e2", {"ts": 3}),
        (B, "m.fully_read", None): ("$e3", {}),
    }
    assert table_view(entries) == expected
    delta = build_delta(ROOM, 1, 1, entries)
    assert delta is not None
    view = apply_delta({}, delta)
    assert view == expected
    assert apply_delta(view, delta) == expected  # twice: no change
    assert table_view([]) == {}
    with pytest.raises(ValueError):
        table_view([(k(A), v("$e", 1)), (k(A, room="!other:hs1"), v("$e", 1))])


def test_later_delta_overwrites_a_slot_in_the_view() -> None:
    view: dict = {}
    apply_delta(view, build_delta(ROOM, 1, 1, [(k(A), v("$e1", 1))]))
    apply_delta(view, build_delta(ROOM, 2, 2, [(k(A), v("$e2", 2))]))
    assert view == {(A, "m.read", None): ("$e2", {"ts": 2})}


# --- properties --------------------------------------------------------------------------

USERS = [A, B, "@c:hs1"]
# Each event lives in one thread, as in a room: (event_id, thread).
EVENTS = [
    ("$m1", "main"),
    ("$m2", "main"),
    ("$root", "main"),
    ("$t1", "$root"),
    ("$t2", "$root"),
    ("$u1", "$other"),
]
TYPES = ["m.read", "m.read.private", "m.fully_read"]


@st.composite
def changes(draw: st.DrawFn, clash_free: bool = False) -> list[tuple[ReceiptKey, Receipt]]:
    """Changelog writes of one room. With `clash_free`, each user is either always
    unthreaded or always threaded, so no delta can hide a slot (MSC4102)."""
    threaded = {u: draw(st.booleans()) for u in USERS}
    out = []
    for _ in range(draw(st.integers(0, 25))):
        user = draw(st.sampled_from(USERS))
        receipt_type = draw(st.sampled_from(TYPES))
        pos = draw(st.integers(0, len(EVENTS) - 1))
        event_id, thread = EVENTS[pos]
        if receipt_type == "m.fully_read":
            thread_id = None
        elif clash_free:
            thread_id = thread if threaded[user] else None
        else:
            thread_id = draw(st.sampled_from([None, thread]))
        ts = draw(st.integers(0, 2**40))
        out.append(
            (
                k(user, receipt_type, thread_id),
                Receipt(event_id, pos, ts, client_data(ts, thread_id)),
            )
        )
    return out


def cut(draw: st.DrawFn, items: list) -> list[list]:
    """Cut a sequence into consecutive batches at arbitrary points."""
    points = sorted(draw(st.sets(st.integers(1, max(len(items) - 1, 1)), max_size=len(items))))
    bounds = [0, *[p for p in points if p < len(items)], len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=150, deadline=None)
@given(changes())
def test_every_emitted_receipt_event_validates_against_the_spec(
    writes: list[tuple[ReceiptKey, Receipt]],
) -> None:
    delta = build_delta(ROOM, 1, 1, writes)
    if delta is None:
        assert writes == []
        return
    check_spec(delta)
    # Every key's latest value shows, except a threaded one hidden by MSC4102.
    view = apply_delta({}, delta)
    latest = dict(writes)
    for key, value in latest.items():
        slot = (key.user_id, key.receipt_type, key.thread_id)
        if slot in view:
            assert view[slot][0] == value.event_id
        else:
            assert key.thread_id is not None
            assert latest.get(k(key.user_id, key.receipt_type)) is not None
            assert latest[k(key.user_id, key.receipt_type)].event_id == value.event_id


@settings(max_examples=150, deadline=None)
@given(changes(), st.data())
def test_applying_a_delta_twice_is_idempotent(
    writes: list[tuple[ReceiptKey, Receipt]], data: st.DataObject
) -> None:
    records = [(i, key.encode(), value.encode()) for i, (key, value) in enumerate(writes)]
    deltas = [d for batch in cut(data.draw, records) for d in plan_deltas(batch, 0)]
    once: dict = {}
    for d in deltas:
        apply_delta(once, d)
    twice: dict = {}
    for d in deltas:
        apply_delta(twice, d)
        apply_delta(twice, d)
    assert twice == once
    # Redelivery after a fault: replay from any earlier delta on, the result is the same.
    if deltas:
        start = data.draw(st.integers(0, len(deltas) - 1), label="replay from")
        replayed = dict(once)
        for d in deltas[start:]:
            apply_delta(replayed, d)
        assert replayed == once


@settings(max_examples=150, deadline=None)
@given(changes(clash_free=True), st.data())
def test_view_from_deltas_equals_the_table_however_batches_are_cut(
    writes: list[tuple[ReceiptKey, Receipt]], data: st.DataObject
) -> None:
    records = [(i, key.encode(), value.encode()) for i, (key, value) in enumerate(writes)]
    view: dict = {}
    seqs = []
    for batch in cut(data.draw, records):
        for delta in plan_deltas(batch, 0):
            check_spec(delta)
            seqs.append(delta["seq"])
            assert delta["seq"] == batch[-1][0]
            apply_delta(view, delta)
    assert seqs == sorted(set(seqs))  # seq grows with each delta of the room
    assert view == table_view(dict(writes).items())


def _user_parts_of_a_delta(
    user_id: str, writes: list[tuple[ReceiptKey, Receipt | None]]
) -> tuple[dict, dict | None]:
    """The composition `seen_by` replaces: the user's part of a full delta."""
    mine = [(key, v) for key, v in writes if key.receipt_type == "m.read" or key.user_id == user_id]
    delta = build_delta(ROOM, 0, 0, mine) or {}
    content: dict = {}
    for part in (delta.get("receipt"), (delta.get("private") or {}).get(user_id)):
        for event_id, by_type in (part or {}).get("content", {}).items():
            for receipt_type, users in by_type.items():
                content.setdefault(event_id, {}).setdefault(receipt_type, {}).update(users)
    return content, (delta.get("account_data") or {}).get(user_id)


@settings(max_examples=300, deadline=None)
@given(changes(), st.sampled_from(USERS), st.sets(st.integers(0, 25)))
def test_what_a_user_sees_is_their_part_of_the_delta(
    writes: list[tuple[ReceiptKey, Receipt]], user_id: str, removed: set[int]
) -> None:
    """`seen_by` (one pass, every `/sync` and sliding-sync answer) gives exactly what a full
    delta shows the user: others' private receipts and all removals hidden, MSC4102 applied."""
    with_removals: list[tuple[ReceiptKey, Receipt | None]] = [
        (key, None if i in removed else value) for i, (key, value) in enumerate(writes)
    ]
    assert seen_by(ROOM, user_id, with_removals) == _user_parts_of_a_delta(user_id, with_removals)
