"""Every input bounded in bytes (issue 12): thread IDs by the grammar, held receipts per key
and per partition, entries of the internal federation stream checked again, and outbound
EDUs within 64 KiB of canonical JSON."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core import ids
from receipt_streams.core.deltas import MAX_DELTA_BYTES, apply_delta, plan_deltas, table_view
from receipt_streams.core.federation import (
    MAX_EDU_BYTES,
    OutboundQueue,
    canonical_size,
    edu_contents,
    split_edu,
)
from receipt_streams.core.processor import Limits, PutOnHold
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.state import HeldTable
from tests.core.harness import ROOM, T0, Harness, decoded, dlq_reasons, dlqs, folded

A = "@a:hs1"
FED_IN = "receipt-streams-federation-in"

# --- thread IDs --------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["main", "$root", "$abc:hs1", "$" + "x" * 254])
def test_valid_thread_ids(good: str) -> None:
    assert ids.valid_thread_id(good)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        1,
        ["main"],
        "",
        "Main",
        "main ",
        "root",
        "$",
        "$a b",
        "$a\x00",
        "$" + "x" * 255,
        '"' * 300,
        "$é",
        "$a:bad server",
        '"' * 330_000,
    ],
)
def test_invalid_thread_ids(bad: Any) -> None:
    assert not ids.valid_thread_id(bad)


@given(st.text(max_size=300))
def test_valid_thread_id_is_main_or_an_event_id_of_at_most_255_bytes(value: str) -> None:
    ok = ids.valid_thread_id(value)
    if ok:
        assert value == "main" or (value.startswith("$") and len(value.encode()) <= 255)
        assert value.isascii() and value.isprintable() and " " not in value


@pytest.mark.parametrize("bad", ["", "mainx", "x" * 300, "$a\u0001", "$" + "é" * 100])
def test_client_receipt_with_a_bad_thread_id_goes_to_the_dlq(bad: str) -> None:
    h = Harness()
    h.member(A)
    h.event("$e1")
    effects = h.receipt(A, "m.read", "$e1", thread_id=bad)
    assert dlq_reasons(effects) == ["invalid_thread"]
    assert h.table() == {}


def test_rel_type_is_bounded_in_bytes() -> None:
    h = Harness()
    effects = h.event("$e1", rel=("é" * 200, "$root"))  # 200 characters, 400 bytes
    assert dlq_reasons(effects) == ["bad_shape"]


# --- inbound entries ---------------------------------------------------------------------


def test_remote_thread_id_must_be_main_or_an_event_id() -> None:
    content = {
        ROOM: {
            "m.read": {"@u:hs2": {"event_ids": ["$e"], "data": {"ts": 1, "thread_id": "x" * 300}}}
        }
    }
    accepted, rejected = split_edu("hs2", content)
    assert accepted == [] and [str(r.rejection.reason) for r in rejected] == ["invalid_thread"]


def fed_in(h: Harness, value: Any) -> list[Any]:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return h.carry_out(h.processor.remote_receipt(h.source(FED_IN, raw, ROOM.encode()), h.now))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            {"origin": "hs2", "room_id": ROOM, "user_id": "@c:hs2", "event_id": "$e", "data": {}},
            "bad_shape",
        ),
        ({"origin": "hs2", "room_id": ROOM, "user_id": "@c:hs2", "event_id": "$e"}, "bad_shape"),
        (
            {"origin": "hs2", "room_id": ROOM, "user_id": "@c:hs2", "event_id": "$e", "data": []},
            "bad_shape",
        ),
        (
            {
                "origin": "hs2",
                "room_id": ROOM,
                "user_id": "@c:hs3",
                "event_id": "$e",
                "data": {"ts": 1},
            },
            "origin_mismatch",
        ),
        (
            {
                "origin": "hs2",
                "room_id": "nope",
                "user_id": "@c:hs2",
                "event_id": "$e",
                "data": {"ts": 1},
            },
            "bad_id",
        ),
        ({"origin": 5}, "bad_shape"),
        ([1, 2], "bad_shape"),
        (b"{nope", "not_json"),
    ],
)
def test_internal_entries_are_checked_again(value: Any, reason: str) -> None:
    """Written straight to the internal topic, an entry without `data.ts` was internal_error."""
    h = Harness()
    assert dlq_reasons(fed_in(h, value)) == [reason]


def test_a_good_internal_entry_is_folded() -> None:
    h = Harness()
    h.member("@c:hs2")
    value = {
        "origin": "hs2",
        "room_id": ROOM,
        "user_id": "@c:hs2",
        "event_id": "$e",
        "data": {"ts": 1},
    }
    assert folded(fed_in(h, value))


# --- held receipts in bytes --------------------------------------------------------------


def test_held_list_is_capped_in_bytes() -> None:
    h = Harness(Limits(held_key_bytes=4_000))
    h.member(A)
    outcomes = [h.receipt(A, "m.read", "$later", thread_id=f"${i:0>200}") for i in range(40)]
    held = [o for o in outcomes if o == [PutOnHold("event")]]
    overflow = [o for o in outcomes if dlq_reasons(o) == ["held_overflow"]]
    assert held and overflow and len(held) + len(overflow) == 40
    assert all(len(raw) <= 4_000 for raw in h.held.values())
    assert "4000 bytes" in decoded(dlqs(overflow[0])[0])["error"]["message"]


def test_held_bytes_are_capped_per_partition() -> None:
    h = Harness(Limits(held_partition_bytes=3_000))
    h.member(A)
    results = [h.receipt(A, "m.read", f"$later{i}") for i in range(30)]
    assert any(dlq_reasons(r) == ["held_overflow"] for r in results)
    assert sum(map(len, h.held.values())) <= 3_000
    # What is released makes room again.
    h.event("$later0")
    assert h.receipt(A, "m.read", "$later99") == [PutOnHold("event")]


def actual(store: dict[bytes, bytes], partition: int) -> int:
    return sum(len(v) for v in store.values() if orjson.loads(v)[0]["partition"] == partition)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("hold"), st.integers(0, 1), st.integers(0, 4), st.integers(0, 3)),
            st.tuples(st.just("event"), st.integers(0, 1), st.integers(0, 4)),
            st.tuples(st.just("tick"), st.integers(0, 1), st.integers(0, 40_000)),
            st.tuples(st.just("restart")),
        ),
        max_size=40,
    )
)
def test_partition_bytes_follow_the_store(ops: list[tuple[Any, ...]]) -> None:
    """One processor, one store for two partitions (as in the faust engine): the count per
    partition always equals the bytes of its held lists, also after a restart."""
    h = Harness(Limits(grace_ms=10_000))
    h.member(A)
    rooms = ["!r0:hs1", "!r1:hs1"]
    for room in rooms:
        h.member(A, room=room)
    held = h.processor.held
    for op in ops:
        if op[0] == "hold":
            _, p, event, pad = op
            h.partition = p
            h.receipt(
                A, "m.read", f"$x{event}", room=rooms[p], thread_id="$" + "t" * (pad * 50 + 1)
            )
        elif op[0] == "event":
            _, p, event = op
            h.partition = p
            h.event(f"$x{event}", room=rooms[p])
        elif op[0] == "tick":
            _, p, dt = op
            h.partition = p
            h.tick(h.now + dt)
        else:
            h.processor.held = held = HeldTable(h.held)
        for p in (0, 1):
            assert held.partition_bytes(p) == actual(h.held, p)


# --- outbound EDUs -----------------------------------------------------------------------


def value(event_id: str, thread: str | None, ts: int, pad: int) -> tuple[str, dict[str, Any], None]:
    data: dict[str, Any] = {"ts": ts}
    if thread is not None:
        data["thread_id"] = thread
    if pad:
        data["x"] = "y" * pad  # larger than local receipts are, to make many EDUs
    return (event_id, data, None)


slots = st.dictionaries(
    st.tuples(
        st.sampled_from([f"!room{i}:hs1" for i in range(5)] + ["!" + "r" * 250 + ":hs1"]),
        st.sampled_from([f"@u{i}:hs1" for i in range(30)] + ['@"\\' + "q" * 240 + ":hs1"]),
        st.sampled_from([None, "main", "$t1", "$" + "t" * 254]),
    ),
    st.tuples(
        st.sampled_from(["$e1", "$" + "e" * 254]),
        st.integers(0, 2**63 - 1),
        st.integers(0, 5_000),
    ),
    max_size=120,
)


@settings(max_examples=80, deadline=None)
@given(slots, st.integers(300, MAX_EDU_BYTES))
def test_edus_are_within_the_bound_and_carry_every_entry_once(
    entries: dict[Any, Any], max_bytes: int
) -> None:
    pending = {s: value(e, s[2], ts, pad) for s, (e, ts, pad) in entries.items()}
    contents = edu_contents(pending, max_bytes=max_bytes)
    seen: list[tuple[str, str, str | None]] = []
    for content in contents:
        assert (
            canonical_size(content) <= max_bytes
            or sum(len(by["m.read"]) for by in content.values()) == 1
        )  # only a receipt too large for any EDU goes alone
        for room, by_type in content.items():
            for user, entry in by_type["m.read"].items():
                seen.append((room, user, entry["data"].get("thread_id")))
                assert entry == {"event_ids": [pending[seen[-1]][0]], "data": pending[seen[-1]][1]}
    assert sorted(seen, key=str) == sorted(pending, key=str)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.integers(1, 3_000), st.just(3_000)))
def test_flushed_edus_are_at_most_64_kib(n: int) -> None:
    q = OutboundQueue("hs1")
    for i in range(n):
        room = f"!room{i % 7}:hs1"
        q.add(
            {
                "room_id": room,
                "user_id": f"@user{i}:hs1",
                "thread_id": "$" + "t" * 200 if i % 3 else None,
                "event_id": "$" + "e" * 200,
                "data": {"ts": T0 + i, **({"thread_id": "$" + "t" * 200} if i % 3 else {})},
                "destinations": ["hs2", "hs3"],
            }
        )
    edus = q.flush(T0)
    for edu in edus:
        assert canonical_size(edu) <= MAX_EDU_BYTES
    for dest in ("hs2", "hs3"):
        users = [
            u
            for edu in edus
            if edu["destination"] == dest
            for by in edu["content"].values()
            for u in by["m.read"]
        ]
        assert sorted(users) == sorted(f"@user{i}:hs1" for i in range(n))
    if n >= 1_000:
        assert len(edus) > 2  # the 64 KiB bound cut them


# --- sync deltas -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60_000)), max_size=60))
def test_deltas_are_cut_by_size_and_rebuild_the_table(changes: list[tuple[int, int]]) -> None:
    """Remote receipts keep their data as sent (up to an EDU's size): a window of them in one
    room must not make a delta the broker refuses."""
    log = []
    table = {}
    for offset, (user, pad) in enumerate(changes):
        key = ReceiptKey(ROOM, f"@u{user}:hs2", "m.read", None)
        value = Receipt(f"$e{offset}", None, offset, {"ts": offset, "x": "y" * pad})
        log.append((offset, key.encode(), value.encode()))
        table[key] = value
    deltas = plan_deltas(log, 0)
    seqs = [d["seq"] for d in deltas]
    assert seqs == sorted(set(seqs))
    view: dict = {}
    for delta in deltas:
        assert len(orjson.dumps(delta)) <= MAX_DELTA_BYTES + 61_000  # one change may be large
        apply_delta(view, delta)
    assert view == table_view(table.items())
