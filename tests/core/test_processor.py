"""The Processor over dict stores: hold, release, expire, fold, reject (CONTRACT §4)."""

from __future__ import annotations

import orjson
import pytest

from receipt_streams.core.dlq import Source
from receipt_streams.core.fold import Outcome
from receipt_streams.core.processor import HISTORY, Folded, ForgetHeld, Limits, PutOnHold
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.state import HeldTable
from tests.core.harness import (
    CLIENT,
    EVENTS,
    MEMBERSHIP,
    ROOM,
    T0,
    Harness,
    decoded,
    dlq_reasons,
    dlqs,
    folded,
)

A, B, C = "@a:hs1", "@b:hs1", "@c:hs2"
GRACE = 30_000


@pytest.fixture
def h() -> Harness:
    h = Harness()
    h.member(A)
    h.member(B)
    h.event("$e1")  # pos 3
    h.event("$e2")  # pos 4
    h.event("$e3")  # pos 5
    h.event("$root")  # pos 6
    h.event("$t1", rel=("m.thread", "$root"))  # pos 7
    h.event("$t2", rel=("m.thread", "$root"))  # pos 8
    h.effects.clear()
    return h


def test_accepted_receipt_is_in_the_table(h: Harness) -> None:
    effects = h.receipt(A, "m.read", "$e1", ts=111)
    key = ReceiptKey(ROOM, A, "m.read", None)
    assert effects[0] == Folded(key, Receipt("$e1", 3, 111, {"ts": 111}), Outcome.APPLIED)
    assert [e.stream for e in effects[1:]] == [HISTORY]  # and nothing else (tests/core/feeds)
    assert h.table() == {key: Receipt("$e1", 3, 111, {"ts": 111})}
    # Exactly the changelog bytes of the contract.
    assert orjson.loads(h.receipts[key.encode()]) == {
        "event_id": "$e1",
        "stream_pos": 3,
        "ts": 111,
        "data": {"ts": 111},
    }


def test_read_and_read_private_are_independent_slots(h: Harness) -> None:
    h.receipt(A, "m.read", "$e2")
    h.receipt(A, "m.read.private", "$e1")
    assert h.slot(A, "m.read").event_id == "$e2"
    assert h.slot(A, "m.read.private").event_id == "$e1"
    h.receipt(A, "m.read.private", "$e3")
    assert h.slot(A, "m.read").event_id == "$e2"
    assert h.slot(A, "m.read.private").event_id == "$e3"
    assert len(h.table()) == 2


def test_unthreaded_main_and_thread_are_independent_slots(h: Harness) -> None:
    h.receipt(A, "m.read", "$e3")
    h.receipt(A, "m.read", "$e1", thread_id="main")
    h.receipt(A, "m.read", "$t1", thread_id="$root")
    assert {k.thread_id: v.event_id for k, v in h.table().items()} == {
        None: "$e3",
        "main": "$e1",
        "$root": "$t1",
    }
    # A later receipt in one slot does not move the others, nor does an older one.
    h.receipt(A, "m.read", "$t2", thread_id="$root")
    h.receipt(A, "m.read", "$e2")
    assert {k.thread_id: v.event_id for k, v in h.table().items()} == {
        None: "$e3",
        "main": "$e1",
        "$root": "$t2",
    }
    assert h.slot(A, thread_id="main").data == {"ts": T0, "thread_id": "main"}


def test_receipts_never_move_backwards(h: Harness) -> None:
    h.receipt(A, "m.read", "$e2", ts=1)
    effects = h.receipt(A, "m.read", "$e1", ts=2)
    assert [f.outcome for f in folded(effects)] == [Outcome.UNCHANGED]
    assert h.slot(A) == Receipt("$e2", 4, 1, {"ts": 1})
    # Same event again with a new ts: nothing changes, nothing written.
    log_len = len(h.receipts.log)
    effects = h.receipt(A, "m.read", "$e2", ts=3)
    assert [f.outcome for f in folded(effects)] == [Outcome.UNCHANGED]
    assert h.slot(A) == Receipt("$e2", 4, 1, {"ts": 1})
    # The exact same receipt (e.g. a redelivered record): REPLAYED, still no write.
    effects = h.receipt(A, "m.read", "$e2", ts=1)
    assert [f.outcome for f in folded(effects)] == [Outcome.REPLAYED]
    assert len(h.receipts.log) == log_len


def test_fully_read_moves_forward_only(h: Harness) -> None:
    h.receipt(A, "m.fully_read", "$e2")
    h.receipt(A, "m.fully_read", "$e1")
    assert h.slot(A, "m.fully_read").event_id == "$e2"
    h.receipt(A, "m.fully_read", "$e3")
    assert h.slot(A, "m.fully_read").event_id == "$e3"
    assert h.slot(A, "m.read") is None  # account data is not a read receipt


def test_fully_read_with_thread_id_is_rejected(h: Harness) -> None:
    effects = h.receipt(A, "m.fully_read", "$e1", thread_id="main")
    assert dlq_reasons(effects) == ["invalid_thread"]
    assert h.table() == {}


def test_thread_mismatch_is_rejected(h: Harness) -> None:
    effects = h.receipt(A, "m.read", "$t1", thread_id="main")
    assert dlq_reasons(effects) == ["thread_mismatch"]
    effects = h.receipt(A, "m.read", "$e1", thread_id="$root")
    assert dlq_reasons(effects) == ["thread_mismatch"]
    effects = h.receipt(A, "m.read", "$root", thread_id="$root")  # the root is in main
    assert dlq_reasons(effects) == ["thread_mismatch"]
    assert h.table() == {}
    assert h.held_entries() == {}


def test_annotation_in_a_thread_counts_for_that_thread(h: Harness) -> None:
    h.event("$react", rel=("m.annotation", "$t1"))
    h.event("$react_root", rel=("m.annotation", "$root"))
    assert folded(h.receipt(A, "m.read", "$react", thread_id="$root"))
    assert folded(h.receipt(A, "m.read", "$react_root", thread_id="main"))
    assert dlq_reasons(h.receipt(B, "m.read", "$react_root", thread_id="$root")) == [
        "thread_mismatch"
    ]


@pytest.mark.parametrize("membership", ["leave", "ban"])
def test_user_who_left_is_rejected_at_once(h: Harness, membership: str) -> None:
    h.member(A, membership)
    effects = h.receipt(A, "m.read", "$e1")
    assert dlq_reasons(effects) == ["not_joined"]
    # Not even held when the event is unknown too.
    assert dlq_reasons(h.receipt(A, "m.read", "$nope")) == ["not_joined"]
    assert h.held_entries() == {}
    assert h.table() == {}


def test_not_yet_joined_is_held_then_released_on_join(h: Harness) -> None:
    effects = h.receipt(C, "m.read", "$e2", ts=42)
    assert effects == [PutOnHold("join")]
    assert h.table() == {}
    key = HeldTable.key(ROOM, "join", C)
    [entry] = h.held_entries()[key]
    assert (entry["topic"], entry["offset"], entry["held_at"]) == (CLIENT, 0, T0)

    h.member(C, "invite")  # not a join yet: still held
    assert h.table() == {} and key in h.held

    effects = h.member(C)
    assert removal_of(effects[-1]) == key
    assert folded(effects) == [
        Folded(
            ReceiptKey(ROOM, C, "m.read", None), Receipt("$e2", 4, 42, {"ts": 42}), Outcome.APPLIED
        )
    ]
    assert h.table() == {ReceiptKey(ROOM, C, "m.read", None): Receipt("$e2", 4, 42, {"ts": 42})}
    assert h.held == {}


def test_unknown_event_is_held_then_released_when_the_event_arrives(h: Harness) -> None:
    assert h.receipt(A, "m.read", "$later", thread_id="$root", ts=7) == [PutOnHold("event")]
    assert h.receipt(B, "m.read.private", "$later") == [PutOnHold("event")]
    key = HeldTable.key(ROOM, "event", "$later")
    assert len(h.held_entries()[key]) == 2
    assert h.table() == {}

    effects = h.event("$later", rel=("m.thread", "$root"))  # pos 9
    assert removal_of(effects[-1]) == key
    assert h.table() == {
        ReceiptKey(ROOM, A, "m.read", "$root"): Receipt(
            "$later", 9, 7, {"ts": 7, "thread_id": "$root"}
        ),
        ReceiptKey(ROOM, B, "m.read.private", None): Receipt("$later", 9, T0, {"ts": T0}),
    }
    assert h.held == {}


def test_release_checks_the_thread_when_the_event_arrives(h: Harness) -> None:
    assert h.receipt(A, "m.read", "$later", thread_id="main") == [PutOnHold("event")]
    effects = h.event("$later", rel=("m.thread", "$root"))
    assert dlq_reasons(effects) == ["thread_mismatch"]
    assert removal_of(effects[-1]) == HeldTable.key(ROOM, "event", "$later")
    assert h.table() == {} and h.held == {}
    rejected = decoded(dlqs(effects)[0])
    assert (rejected["topic"], rejected["offset"]) == (CLIENT, 0)


def test_held_for_join_then_for_event(h: Harness) -> None:
    assert h.receipt(C, "m.read", "$later") == [PutOnHold("join")]
    effects = h.member(C)
    join_key = HeldTable.key(ROOM, "join", C)
    event_key = HeldTable.key(ROOM, "event", "$later")
    assert effects[0] == PutOnHold("event") and removal_of(effects[1]) == join_key
    [entry] = h.held_entries()[event_key]
    assert entry["held_at"] == T0  # the grace period runs from the first hold
    assert join_key not in h.held
    h.event("$later")
    assert h.slot(C).event_id == "$later"
    assert h.held == {}


def test_held_receipt_of_a_user_who_then_leaves_is_rejected(h: Harness) -> None:
    assert h.receipt(C, "m.read", "$e1") == [PutOnHold("join")]
    effects = h.member(C, "leave")
    assert dlq_reasons(effects) == ["not_joined"]
    assert removal_of(effects[-1]) == HeldTable.key(ROOM, "join", C)
    assert h.held == {} and h.table() == {}


def test_reprocessing_a_held_record_does_not_duplicate_it(h: Harness) -> None:
    src = h.source(CLIENT, orjson.dumps(h.receipt_value(A, "m.read", "$later")), ROOM.encode())
    assert h.feed(src) == [PutOnHold("event")]
    before = dict(h.held)
    assert h.feed(src) == [PutOnHold("event")]  # the same record, redelivered after a crash
    assert h.held == before
    [entries] = h.held_entries().values()
    assert len(entries) == 1
    effects = h.event("$later")
    assert [f.outcome for f in folded(effects)] == [Outcome.APPLIED]


def test_held_receipts_expire_into_the_dlq(h: Harness) -> None:
    raw_event = orjson.dumps(h.receipt_value(A, "m.read", "$never", ts=5))
    raw_join = orjson.dumps(h.receipt_value(C, "m.read", "$e1", ts=6))
    assert h.feed(h.source(CLIENT, raw_event, ROOM.encode())) == [PutOnHold("event")]
    assert h.feed(h.source(CLIENT, raw_join, ROOM.encode())) == [PutOnHold("join")]

    assert h.tick(T0 + GRACE - 1) == []  # not yet
    assert len(h.held) == 2

    effects = h.tick(T0 + GRACE)
    assert sorted(dlq_reasons(effects)) == ["not_joined", "unknown_event"]
    by_reason = {str(d.reason): decoded(d) for d in dlqs(effects)}
    assert by_reason["unknown_event"]["value"] == raw_event.decode()
    assert by_reason["unknown_event"]["offset"] == 0
    assert by_reason["not_joined"]["value"] == raw_join.decode()
    assert by_reason["not_joined"]["offset"] == 1
    for record in by_reason.values():
        assert record["topic"] == CLIENT
        assert record["key"] == ROOM
        assert record["ts"] == T0 + GRACE
    assert {e.key for e in effects if isinstance(e, ForgetHeld)} == {
        HeldTable.key(ROOM, "event", "$never"),
        HeldTable.key(ROOM, "join", C),
    }
    assert h.held == {} and h.table() == {}
    assert h.tick(T0 + 10 * GRACE) == []  # nothing left to expire


def test_expiry_keeps_entries_that_are_not_due(h: Harness) -> None:
    h.receipt(A, "m.read", "$later")
    h.now = T0 + 10_000
    h.receipt(B, "m.read", "$later")
    effects = h.tick(T0 + GRACE)
    assert dlq_reasons(effects) == ["unknown_event"]
    key = HeldTable.key(ROOM, "event", "$later")
    [removal] = [e for e in effects if isinstance(e, ForgetHeld)]
    assert removal.key == key and [r[2] for r in removal.records] == [0]
    assert [e["offset"] for e in h.held_entries()[key]] == [1]
    h.event("$later")
    assert h.slot(B).event_id == "$later"
    assert h.slot(A) is None


def test_tick_only_sweeps_its_partition(h: Harness) -> None:
    h.receipt(A, "m.read", "$later")
    assert h.processor.tick(1, T0 + 10 * GRACE) == []
    assert len(h.held) == 1


def test_expiry_folds_a_receipt_whose_dependency_arrived_meanwhile(h: Harness) -> None:
    # Held for the event; the event index has it (a release was cut short by a crash).
    h.receipt(A, "m.read", "$later")
    h.processor.state.put_event(ROOM, "$later", h.processor.state.event(ROOM, "$e3"))  # pos 5
    effects = h.tick(T0 + GRACE)
    assert [f.outcome for f in folded(effects)] == [Outcome.APPLIED]
    assert dlqs(effects) == []
    assert h.slot(A).event_id == "$later" and h.held == {}


def test_event_redelivered_after_release_changes_nothing(h: Harness) -> None:
    h.receipt(A, "m.read", "$later")
    h.event("$later", pos=20)
    table = h.table()
    state = dict(h.state)
    assert h.event("$later", pos=20) == []
    # A second record for a known event never moves its position.
    assert h.event("$later", pos=99) == []
    assert h.table() == table and h.state == state


def test_release_cut_short_by_a_crash_is_redone(h: Harness) -> None:
    """The event was indexed but the crash came before the held list was deleted: the
    redelivered event record releases it again, and the fold says REPLAYED if it was applied."""
    h.receipt(A, "m.read", "$later")
    key = HeldTable.key(ROOM, "event", "$later")
    saved = dict(h.held)
    effects = h.processor.room_event(
        h.source(
            EVENTS,
            orjson.dumps(
                {
                    "room_id": ROOM,
                    "event_id": "$later",
                    "sender": A,
                    "stream_pos": 20,
                    "origin_server_ts": 1,
                }
            ),
            ROOM.encode(),
        ),
        T0,
    )
    assert key in {e.key for e in effects if isinstance(e, ForgetHeld)}  # ... never applied
    assert h.held == saved
    effects = h.event("$later", pos=20)
    assert [f.outcome for f in folded(effects)] == [Outcome.REPLAYED]
    assert h.held == {}


def test_held_overflow() -> None:
    h = Harness(Limits(held_per_dep=2))
    h.member(A)
    assert h.receipt(A, "m.read", "$later") == [PutOnHold("event")]
    assert h.receipt(A, "m.read.private", "$later") == [PutOnHold("event")]
    assert dlq_reasons(h.receipt(A, "m.fully_read", "$later")) == ["held_overflow"]
    h.event("$later")
    assert {k.receipt_type for k in h.table()} == {"m.read", "m.read.private"}


def test_wrong_key_is_rejected(h: Harness) -> None:
    effects = h.send(CLIENT, h.receipt_value(A, "m.read", "$e1"), key="!other:hs1")
    assert dlq_reasons(effects) == ["key_mismatch"]
    effects = h.send(CLIENT, h.receipt_value(A, "m.read", "$e1"), key=None)
    assert dlq_reasons(effects) == ["key_mismatch"]
    assert h.table() == {}


@pytest.mark.parametrize("topic", [CLIENT, MEMBERSHIP, EVENTS])
def test_bad_records_on_every_input_go_to_the_dlq(h: Harness, topic: str) -> None:
    state = dict(h.state)
    for raw, reason in [
        (b"{nope", "not_json"),
        (None, "not_json"),
        (b"{}", "bad_shape"),
        (b"x" * 70_000, "too_large"),
    ]:
        effects = h.send(topic, raw, key=ROOM)
        assert dlq_reasons(effects) == [reason]
        assert dlqs(effects)[0].topic == topic
    assert h.state == state and h.table() == {} and h.held == {}


def test_membership_for_another_room_does_not_leak(h: Harness) -> None:
    h.member(C, room="!other:hs1")
    assert h.receipt(C, "m.read", "$e1") == [PutOnHold("join")]
    h.event("$x", room="!other:hs1")
    assert h.receipt(A, "m.read", "$x") == [PutOnHold("event")]


class CrashOnMemberWrite(dict):
    """A room-state store whose next member-entry write fails, as if the worker died between
    the servers write and the member write."""

    armed = False

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.armed and orjson.loads(key)[0] == "m":
            self.armed = False
            raise RuntimeError("crash")
        super().__setitem__(key, value)


@pytest.mark.parametrize("membership", ["join", "leave"])
def test_membership_crash_prefix_through_the_processor(membership: str) -> None:
    h = Harness()
    h.state = CrashOnMemberWrite()
    h.processor = type(h.processor)(h.receipts, h.state, h.held, Limits())
    h.member(A)
    h.member(C)

    def change_of_d(to: str, stream_pos: int) -> Source:
        value = {"room_id": ROOM, "user_id": "@d:hs2", "membership": to, "stream_pos": stream_pos}
        return h.source(MEMBERSHIP, orjson.dumps(value), ROOM.encode())

    record = change_of_d("join", 10)
    if membership == "leave":
        h.feed(record)
        record = change_of_d("leave", 11)
    h.state.armed = True
    with pytest.raises(RuntimeError):
        h.feed(record)
    expected = {"hs1": 1, "hs2": 2 if membership == "join" else 1}
    assert h.processor.state.servers(ROOM).counts == expected  # moved before the crash
    h.feed(record)  # redelivered after the restart
    h.feed(record)  # ... and once more
    assert h.processor.state.servers(ROOM).counts == expected
    assert h.processor.state.member(ROOM, "@d:hs2").membership == membership


def removal_of(effect: object) -> bytes:
    """The held key an effect removes records from (fails for any other effect)."""
    assert isinstance(effect, ForgetHeld), effect
    return effect.key
