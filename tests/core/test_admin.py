"""Admin commands through the Processor (the Router's table, as the engines run it): a room
purge and a user erasure remove exactly their receipts (tombstones on the changelog), room
state and held receipts; bad commands go to the DLQ; everything else is untouched."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.deltas import apply_delta, plan_deltas, table_view
from receipt_streams.core.feeds import PositionKey
from receipt_streams.core.models import SyncDelta
from receipt_streams.core.processor import Limits, Removed
from receipt_streams.core.receipts import ReceiptKey
from receipt_streams.core.state import RoomState
from tests.core.harness import T0, Harness, dlq_reasons

ADMIN = "receipts.admin.v1"  # the default settings, which the harness's Router uses
READ_POSITIONS_TOPIC = "receipts.read-positions.v1"
R1, R2, R3 = "!one:hs1", "!two:hs1", "!three:hs1"
A, B, C = "@a:hs1", "@b:hs1", "@c:hs2"


def purge(h: Harness, room: str, key: Any = ...) -> list[Any]:
    value = {"command": "purge_room", "room_id": room, "ts": T0}
    return h.send(ADMIN, value, room if key is ... else key)


def erase(h: Harness, user: str, key: Any = ...) -> list[Any]:
    value = {"command": "erase_user", "user_id": user, "ts": T0}
    return h.send(ADMIN, value, user if key is ... else key)


def seeded() -> Harness:
    """Three rooms, three users (two local), every receipt type, one receipt held per room."""
    h = Harness(Limits(server_name="hs1"))
    for room in (R1, R2, R3):
        for user in (A, B, C):
            h.member(user, room=room)
        h.event(f"$e1{room[1]}", room=room)
        h.event(f"$e2{room[1]}", room=room)
        for user in (A, B, C):
            h.receipt(user, "m.read", f"$e2{room[1]}", room=room)
            h.receipt(user, "m.read.private", f"$e1{room[1]}", room=room)
            h.receipt(user, "m.fully_read", f"$e1{room[1]}", room=room)
        h.receipt(A, "m.read", f"$later{room[1]}", room=room, thread_id="main")  # held
        h.receipt("@late:hs1", "m.read", f"$e1{room[1]}", room=room)  # held: not joined
    return h


def state_rooms(h: Harness) -> set[str]:
    return {orjson.loads(k)[1] for k in h.state}


def held_users(h: Harness) -> set[tuple[str, str]]:
    out = set()
    for key, entries in h.held_entries().items():
        for e in entries:
            out.add((orjson.loads(key)[0], orjson.loads(e["value"])["user_id"]))
    return out


def test_purge_removes_the_room_and_nothing_else() -> None:
    h = seeded()
    before = h.table()
    held_before = held_users(h)
    log_len = len(h.receipts.log)
    outputs_before = len(h.outputs)
    removed, *positions = purge(h, R2)
    assert removed[:5] == ("purge_room", R2, 9, 3 + 1 + 2, 2)
    assert set(removed.keys) == {k for k in before if k.room_id == R2}
    assert h.table() == {k: v for k, v in before.items() if k.room_id != R2}
    # Each removed slot is one tombstone on the changelog, nothing else is written.
    tombstones = h.receipts.log[log_len:]
    assert {ReceiptKey.decode(k).room_id for _, k, v in tombstones if v is None} == {R2}
    assert len(tombstones) == 9 and all(v is None for _, _, v in tombstones)
    assert state_rooms(h) == {R1, R3}
    assert held_users(h) == {(r, u) for r, u in held_before if r != R2}
    # No DLQ record, nothing to federate: only the local readers' read positions forgotten.
    forgotten = [(PositionKey(R2, A, None), None), (PositionKey(R2, B, None), None)]
    assert [(orjson.loads(e.key), e.value) for e in positions] == [
        (list(k), v) for k, v in forgotten
    ]
    assert [(topic, key, value) for topic, key, value, _ in h.outputs[outputs_before:]] == [
        (READ_POSITIONS_TOPIC, k.encode(), None) for k, _ in forgotten
    ]


def test_erase_removes_the_user_in_every_room() -> None:
    h = seeded()
    before = h.table()
    state_before = dict(h.state)
    removed, *positions = erase(h, A)
    assert removed[:5] == ("erase_user", A, 9, 0, 3)
    # A's read position in each room is forgotten by a tombstone on the feed.
    assert sorted(orjson.loads(e.key)[0] for e in positions if e.value is None) == sorted(
        [R1, R2, R3]
    )
    assert len(positions) == 3
    assert set(removed.keys) == {k for k in before if k.user_id == A}
    assert h.table() == {k: v for k, v in before.items() if k.user_id != A}
    assert h.state == state_before  # membership is the homeserver's to change
    assert all(u != A for _, u in held_users(h))
    assert ("!two:hs1", "@late:hs1") in held_users(h)


def test_a_held_receipt_of_an_erased_user_is_never_folded_later() -> None:
    h = seeded()
    erase(h, "@late:hs1")
    for room in (R1, R2, R3):
        h.member("@late:hs1", room=room)  # the join would have released it
    assert not [k for k in h.table() if k.user_id == "@late:hs1"]


def test_a_purged_room_starts_afresh() -> None:
    """After a purge the room is unknown: a later receipt needs its join and event again,
    as in any new room (the homeserver rejects receipts for a deleted room upstream)."""
    h = seeded()
    purge(h, R1)
    effects = h.receipt(A, "m.read", "$e2o", room=R1)
    assert not h.table().get(ReceiptKey(R1, A, "m.read", None))
    assert effects[-1].__class__.__name__ == "PutOnHold"
    h.member(A, room=R1)
    h.event("$e2o", room=R1)
    assert h.slot(A, room=R1).event_id == "$e2o"


def test_purge_and_erase_of_what_is_not_there_change_nothing() -> None:
    h = seeded()
    before, state, log_len = h.table(), dict(h.state), len(h.receipts.log)
    assert purge(h, "!none:hs1") == [Removed("purge_room", "!none:hs1", 0, 0, 0)]
    assert erase(h, "@nobody:hs1") == [Removed("erase_user", "@nobody:hs1", 0, 0, 0)]
    assert purge(h, R1)[0].receipts == 9
    assert purge(h, R1) == [Removed("purge_room", R1, 0, 0, 0)]  # a redelivery
    assert len(h.table()) == len(before) - 9
    assert h.state != state and len(h.receipts.log) == log_len + 9


def test_bad_commands_go_to_the_dlq() -> None:
    h = seeded()
    before = h.table()
    cases = [
        (b"not json", R1, "not_json"),
        (orjson.dumps({"command": "drop_table", "room_id": R1, "ts": T0}), R1, "bad_shape"),
        (orjson.dumps({"command": "purge_room", "ts": T0}), R1, "bad_shape"),
        (
            orjson.dumps({"command": "purge_room", "room_id": R1, "user_id": A, "ts": T0}),
            R1,
            "bad_shape",
        ),
        (orjson.dumps({"command": "purge_room", "room_id": "nope", "ts": T0}), "nope", "bad_id"),
        (orjson.dumps({"command": "erase_user", "user_id": A}), A, "bad_shape"),  # no ts
        (orjson.dumps({"command": "purge_room", "room_id": R1, "ts": T0}), R2, "key_mismatch"),
        (orjson.dumps({"command": "erase_user", "user_id": A, "ts": T0}), None, "key_mismatch"),
        (None, R1, "not_json"),
    ]
    for value, key, reason in cases:
        effects = h.send(ADMIN, value, key)
        assert dlq_reasons(effects) == [reason], (value, key)
    assert h.table() == before


def test_erase_keeps_to_the_rooms_of_its_partition() -> None:
    """One store serving several partitions (Faust tables): a copy on partition 0 removes
    only the rooms the partitioner sends to 0."""
    h = seeded()
    h.processor.room_partition = lambda room: 0 if room == R1 else 1
    before = h.table()
    erase(h, A)  # the harness's partition is 0
    assert h.table() == {k: v for k, v in before.items() if k.user_id != A or k.room_id != R1}
    # A purge that reached the wrong partition would write its tombstones there: refused.
    assert dlq_reasons(purge(h, R2)) == ["key_mismatch"]
    assert purge(h, R1)[0].receipts == 6  # 9 less A's 3, erased above


# --- properties ------------------------------------------------------------------------

ROOMS = [R1, R2, R3]
USERS = [A, B, C, "@d:hs1"]
TYPES = ["m.read", "m.read.private", "m.fully_read"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(ROOMS), st.sampled_from(USERS)),
        st.tuples(st.just("event"), st.sampled_from(ROOMS), st.integers(0, 4)),
        st.tuples(
            st.just("receipt"),
            st.sampled_from(ROOMS),
            st.sampled_from(USERS),
            st.sampled_from(TYPES),
            st.integers(0, 5),  # event 5 never comes: held
            st.sampled_from([None, "main"]),
        ),
        st.tuples(st.just("purge"), st.sampled_from(ROOMS)),
        st.tuples(st.just("erase"), st.sampled_from(USERS)),
    ),
    max_size=60,
)


def run(h: Harness, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "join":
        h.member(op[2], room=op[1])
    elif kind == "event":
        h.event(f"$ev{op[2]}{op[1][1]}", room=op[1])
    elif kind == "receipt":
        _, room, user, rtype, n, thread = op
        h.receipt(user, rtype, f"$ev{n}{room[1]}", room=room, thread_id=thread)
    elif kind == "purge":
        purge(h, op[1])
    else:
        erase(h, op[1])


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from(ROOMS))
def test_after_a_purge_nothing_of_the_room_remains_and_the_rest_is_untouched(
    history: list[tuple[Any, ...]], room: str
) -> None:
    h = Harness()
    for op in history:
        run(h, op)
    table, state, held = h.table(), dict(h.state), h.held_entries()
    purge(h, room)
    assert h.table() == {k: v for k, v in table.items() if k.room_id != room}
    assert h.state == {k: v for k, v in state.items() if orjson.loads(k)[1] != room}
    assert h.held_entries() == {k: v for k, v in held.items() if orjson.loads(k)[0] != room}
    assert RoomState(h.state).servers(room) is None
    # The changelog's last value per key is the table: a compacted consumer agrees.
    last: dict[bytes, bytes | None] = {}
    for _, k, v in h.receipts.log:
        last[k] = v
    assert {k: v for k, v in last.items() if v is not None} == dict(h.receipts)


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from(USERS))
def test_after_an_erasure_nothing_of_the_user_remains_and_the_rest_is_untouched(
    history: list[tuple[Any, ...]], user: str
) -> None:
    h = Harness()
    for op in history:
        run(h, op)
    table, state, held = h.table(), dict(h.state), h.held_entries()
    erase(h, user)
    assert h.table() == {k: v for k, v in table.items() if k.user_id != user}
    assert h.state == state
    expected = {}
    for key, entries in held.items():
        keep = [e for e in entries if orjson.loads(e["value"])["user_id"] != user]
        if keep:
            expected[key] = keep
    assert h.held_entries() == expected
    # Later receipts of the user fold again, as for anyone (the homeserver refuses a
    # deactivated user's requests upstream).
    h.member(user, room=R1)
    h.event("$fresh1", room=R1)
    h.receipt(user, "m.read", "$fresh1", room=R1)
    assert h.slot(user, room=R1) is not None


@settings(max_examples=150, deadline=None)
@given(ops, st.data())
def test_deltas_carry_purges_and_erasures_to_a_consumers_view(
    history: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    """A consumer applying the sync deltas (the changelog cut anywhere into windows) ends
    with the view of the table: removed slots are removed there too."""
    h = Harness()
    for op in history:
        if op[0] == "receipt":
            op = (*op[:5], None)  # no thread: MSC4102 clashes are another test's matter
        run(h, op)
    log = h.receipts.log
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(log), 1)), max_size=5)))
    bounds = [0, *[c for c in cuts if c < len(log)], len(log)]
    views: dict[str, dict] = {}
    for a, b in itertools.pairwise(bounds):
        for delta in plan_deltas(log[a:b], now_ms=0):
            SyncDelta.model_validate(delta)
            apply_delta(views.setdefault(delta["room_id"], {}), delta)
    for room in ROOMS:
        entries = [(k, v) for k, v in h.table().items() if k.room_id == room]
        assert views.get(room, {}) == table_view(entries)
