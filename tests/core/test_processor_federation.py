"""Federation through the Processor (CONTRACT §4.6-7): inbound EDUs split by origin, checked,
routed to their room and folded; local m.read changes written to the outbox for every other
server in the room, and the EDUs built from the outbox valid by the spec."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest

from receipt_streams.core.deltas import build_delta
from receipt_streams.core.dlq import Source
from receipt_streams.core.federation import OutboundQueue
from receipt_streams.core.fold import Outcome
from receipt_streams.core.processor import (
    FEDERATION_IN,
    FEDERATION_OUT,
    Effect,
    Emit,
    Folded,
    Limits,
    OverDlqBudget,
    SendDlq,
)
from receipt_streams.core.receipts import Receipt, ReceiptKey
from tests.core.harness import CLIENT, ROOM, T0, Harness, decoded, dlq_reasons, dlqs, folded
from tests.support.spec import validate_federation_receipt_edu, validate_receipt_event

FEDERATION = "receipts.federation.v1"
SPLIT = "receipt-streams-federation-in"
A, B = "@a:hs1", "@b:hs1"  # local
C, D, E = "@c:hs2", "@d:hs3", "@e:hs4"  # remote
ROOM2 = "!q:hs1"


def emits(effects: list[Effect], stream: str) -> list[Emit]:
    return [e for e in effects if isinstance(e, Emit) and e.stream == stream]


def outbox(effects: list[Effect]) -> list[dict[str, Any]]:
    return [orjson.loads(e.value) for e in emits(effects, FEDERATION_OUT)]


class FedHarness:
    """`Harness` plus the federation inputs: the raw EDU topic (keyed by origin), and the
    repartitioned topic the split entries travel on to their room's partition."""

    def __init__(self, server_name: str = "hs1") -> None:
        self.h = Harness(Limits(server_name=server_name))

    def edu_value(self, origin: str, content: Any, edu_type: str = "m.receipt") -> dict[str, Any]:
        return {
            "origin": origin,
            "received_ts": self.h.now,
            "edu": {"edu_type": edu_type, "content": content},
        }

    def split(self, origin: str, value: dict[str, Any] | bytes | None) -> list[Effect]:
        # The stdlib encoder: a remote server may send ints over 64 bits, orjson cannot.
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        src = self.h.source(FEDERATION, raw, origin.encode())
        return self.h.carry_out(self.h.processor.federation_edu(src, self.h.now))

    def route(self, emit: Emit) -> list[Effect]:
        assert emit.stream == FEDERATION_IN
        src = self.h.source(SPLIT, emit.value, emit.key)
        return self.h.carry_out(self.h.processor.remote_receipt(src, self.h.now))

    def edu(self, origin: str, content: Any) -> tuple[list[Effect], list[Effect]]:
        """An EDU through both steps: (the split's effects, the room partition's effects)."""
        split = self.split(origin, self.edu_value(origin, content))
        routed: list[Effect] = []
        for emit in emits(split, FEDERATION_IN):
            routed += self.route(emit)
        return split, routed

    def read(self, origin_user: str, event_id: str, ts: int, **data: Any) -> list[Effect]:
        """One remote m.read for ROOM, sent by the user's own server; the room's effects."""
        origin = origin_user.split(":", 1)[1]
        content = {
            ROOM: {"m.read": {origin_user: {"event_ids": [event_id], "data": {"ts": ts, **data}}}}
        }
        split, routed = self.edu(origin, content)
        assert dlqs(split) == []
        return routed


def entry(event_id: str, ts: int = 5, **data: Any) -> dict[str, Any]:
    return {"event_ids": [event_id], "data": {"ts": ts, **data}}


@pytest.fixture
def f() -> FedHarness:
    f = FedHarness()
    for user in (A, B, C, D, E):
        f.h.member(user)  # pos 1-5
    for n in range(1, 5):
        f.h.event(f"$e{n}")  # pos 6-9
    f.h.effects.clear()
    return f


def check_deltas(h: Harness) -> None:
    """Every m.receipt event built from the table is valid by the spec."""
    delta = build_delta(ROOM, 1, T0, [(k, v) for k, v in h.table().items() if k.room_id == ROOM])
    assert delta is not None
    validate_receipt_event(delta["receipt"])


# --- inbound -----------------------------------------------------------------------------


def test_remote_receipt_is_folded_as_sent(f: FedHarness) -> None:
    routed = f.read(C, "$e2", 123, extra={"k": 1})
    key = ReceiptKey(ROOM, C, "m.read", None)
    value = Receipt("$e2", 7, 123, {"ts": 123, "extra": {"k": 1}})
    assert folded(routed) == [Folded(key, value, Outcome.APPLIED)]
    assert f.h.table() == {key: value}
    check_deltas(f.h)


def test_forged_entry_goes_to_the_dlq_and_the_good_one_is_folded(f: FedHarness) -> None:
    # The good entry's padding makes the EDU large enough for a DLQ record per rejected entry
    # within twice its bytes (a tiny EDU's rejections share one summary record).
    content = {ROOM: {"m.read": {C: entry("$e1", p="x" * 2_000), D: entry("$e1"), A: entry("$e1")}}}
    split, routed = f.edu("hs2", content)
    assert dlq_reasons(split) == ["origin_mismatch", "origin_mismatch"]
    dlq = decoded(dlqs(split)[0])
    assert dlq["topic"] == FEDERATION and dlq["key"] == "hs2"
    # That entry only, as a federation record that could be sent again, and the EDU's hash.
    assert orjson.loads(dlq["value"])["edu"]["content"] == {ROOM: {"m.read": {D: entry("$e1")}}}
    assert orjson.loads(dlq["value"])["origin"] == "hs2"
    assert dlq["edu"]["origin"] == "hs2" and dlq["edu"]["path"] == [ROOM, "m.read", D]
    assert dlq["edu"]["entries"] == 1 and len(dlq["edu"]["sha256"]) == 64
    assert D in dlq["error"]["message"]
    assert [x.key.user_id for x in folded(routed)] == [C]
    assert set(f.h.table()) == {ReceiptKey(ROOM, C, "m.read", None)}


def test_split_entries_are_keyed_by_their_room(f: FedHarness) -> None:
    content = {ROOM: {"m.read": {C: entry("$e1")}}, ROOM2: {"m.read": {C: entry("$x")}}}
    split = f.split("hs2", f.edu_value("hs2", content))
    assert sorted(e.key for e in emits(split, FEDERATION_IN)) == [ROOM2.encode(), ROOM.encode()]


def test_origin_not_in_room_until_a_member_joins() -> None:
    f = FedHarness()
    f.h.member(A)
    f.h.event("$e1")
    pad = "x" * 2_000  # an EDU large enough for a DLQ record per rejected entry
    content = {
        ROOM: {"m.read": {C: entry("$e1", p=pad)}},
        ROOM2: {"m.read": {C: entry("$x1", p=pad)}},
    }
    split, routed = f.edu("hs2", content)
    assert dlqs(split) == []
    assert dlq_reasons(routed) == ["origin_not_in_room", "origin_not_in_room"]
    assert {decoded(d)["topic"] for d in dlqs(routed)} == {SPLIT}
    assert f.h.table() == {}
    # A member of hs2 that is not the receipt's user joins: the origin is in the room now.
    f.h.member("@other:hs2")
    first = emits(split, FEDERATION_IN)[0]
    assert first.key == ROOM.encode()
    assert [x.outcome for x in folded(f.route(first))] == [Outcome.APPLIED]
    # ... and leaves again.
    f.h.member("@other:hs2", "leave")
    assert dlq_reasons(f.route(first)) == ["origin_not_in_room"]


def test_a_forged_edu_rejected_in_its_rooms_takes_at_most_twice_its_bytes() -> None:
    """600 entries of the origin's own users for a room the origin is not in: each is
    rejected on the room's partition, where a DLQ record per entry would take 6 to 9 times
    the EDU's bytes (the issue 12 probe). The records stay within twice the EDU's bytes, each
    with the EDU's hash; the rest are counted."""
    f = FedHarness()
    f.h.member(A)
    users = {f"@v{i}:evil.example": entry(f"$e{i}") for i in range(600)}
    value = f.edu_value("evil.example", {ROOM: {"m.read": users}})
    raw = json.dumps(value).encode()
    split = f.split("evil.example", value)
    assert dlqs(split) == []
    routed: list[Effect] = []
    for emit in emits(split, FEDERATION_IN):
        routed += f.route(emit)
    records = dlqs(routed)
    over = [e for e in routed if isinstance(e, OverDlqBudget)]
    assert len(records) + len(over) == 600
    assert 10 <= len(records) < 600
    assert sum(len(SPLIT.encode()) + len(d.record) for d in records) <= 2 * len(raw)
    sha = hashlib.sha256(raw).hexdigest()
    for d in records:
        edu = decoded(d)["edu"]
        assert edu["sha256"] == sha and edu["origin"] == "evil.example" and edu["entries"] == 1
    assert {str(e.reason) for e in over} == {"origin_not_in_room"}


def test_a_small_forged_edu_gets_one_record() -> None:
    f = FedHarness()
    f.h.member(A)
    content = {ROOM: {"m.read": {C: entry("$e1")}}, ROOM2: {"m.read": {C: entry("$x1")}}}
    _, routed = f.edu("hs2", content)
    assert dlq_reasons(routed) == ["origin_not_in_room"]  # one record, as for its own parts
    assert [type(e) for e in routed if not isinstance(e, SendDlq)] == [OverDlqBudget]


def test_an_entry_written_by_something_else_gets_a_record_of_its_own() -> None:
    """The internal topic can be written by anyone who can write to the broker: an entry
    that names no EDU is rejected with a record, as before."""
    f = FedHarness()
    f.h.member(A)
    raw = orjson.dumps(
        {"origin": "hs2", "room_id": ROOM, "user_id": C, "event_id": "$e1", "data": {"ts": 1}}
    )
    routed = f.route(Emit(FEDERATION_IN, ROOM.encode(), raw))
    assert dlq_reasons(routed) == ["origin_not_in_room"]


def test_other_receipt_types_are_rejected_and_the_rest_processed(f: FedHarness) -> None:
    content = {
        ROOM: {
            "m.read.private": {C: entry("$e3")},
            "m.fully_read": {C: entry("$e3")},
            "m.read": {C: entry("$e1", p="x" * 2_000)},  # room for a record per rejection
        }
    }
    split, routed = f.edu("hs2", content)
    assert dlq_reasons(split) == ["bad_receipt_type", "bad_receipt_type"]
    assert set(f.h.table()) == {ReceiptKey(ROOM, C, "m.read", None)}
    assert [x.receipt.event_id for x in folded(routed)] == ["$e1"]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"event_ids": [], "data": {"ts": 1}}, "bad_shape"),
        ({"event_ids": ["$e1", "$e2"], "data": {"ts": 1}}, "bad_shape"),
        ({"event_ids": ["$e1"]}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": "1"}}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": 1.5}}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": False}}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": -5}}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": 2**64}}, "bad_shape"),
        ({"event_ids": ["$e1"], "data": {"ts": 1, "x": 2**70}}, "bad_shape"),
        ("$e1", "bad_shape"),
        ({"event_ids": ["e1"], "data": {"ts": 1}}, "bad_id"),
    ],
)
def test_bad_entries_go_to_the_dlq_one_by_one(f: FedHarness, bad: Any, reason: str) -> None:
    content = {ROOM: {"m.read": {"@bad:hs2": bad, C: entry("$e1")}}}
    split, routed = f.edu("hs2", content)
    assert dlq_reasons(split) == [reason]
    assert [x.key.user_id for x in folded(routed)] == [C]


@pytest.mark.parametrize(
    "content",
    [
        {"r:hs1": {"m.read": {C: entry("$e1")}}},
        {ROOM: {"m.read": {"c:hs2": entry("$e1")}}},
    ],
)
def test_bad_ids_go_to_the_dlq(f: FedHarness, content: dict[str, Any]) -> None:
    split, routed = f.edu("hs2", {**content, ROOM2: {"m.read": {C: entry("$x")}}})
    assert dlq_reasons(split) == ["bad_id"]
    assert [orjson.loads(e.value)["room_id"] for e in emits(split, FEDERATION_IN)] == [ROOM2]
    # Nobody of hs2 in ROOM2: rejected there too, but this small EDU has its one record.
    assert [type(e) for e in routed] == [OverDlqBudget]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (None, "not_json"),
        (
            {"origin": "hs2", "received_ts": 1, "edu": {"edu_type": "m.typing", "content": {}}},
            "bad_shape",
        ),
        (
            {"origin": "hs2", "received_ts": 1, "edu": {"edu_type": "m.receipt", "content": []}},
            "bad_shape",
        ),
        ({"origin": "hs2", "received_ts": 1}, "bad_shape"),
        (
            {
                "origin": "bad server",
                "received_ts": 1,
                "edu": {"edu_type": "m.receipt", "content": {}},
            },
            "bad_id",
        ),
    ],
)
def test_bad_envelope_sends_the_whole_record_to_the_dlq(
    f: FedHarness, value: Any, reason: str
) -> None:
    effects = f.split("hs2", value)
    assert dlq_reasons(effects) == [reason]
    assert emits(effects, FEDERATION_IN) == []
    assert decoded(dlqs(effects)[0])["offset"] == 0


@pytest.mark.parametrize("thread", [7, None, {"id": "$root"}, ""])
def test_non_string_thread_id_is_unthreaded_and_dropped(f: FedHarness, thread: Any) -> None:
    f.read(C, "$e1", 9, thread_id=thread, extra="kept")
    assert f.h.slot(C) == Receipt("$e1", 6, 9, {"ts": 9, "extra": "kept"})
    check_deltas(f.h)


@pytest.mark.parametrize("thread", ["main", "$root"])
def test_string_thread_id_is_a_threaded_slot(f: FedHarness, thread: str) -> None:
    f.read(C, "$e1", 9, thread_id=thread)
    assert f.h.slot(C, thread_id=thread) == Receipt("$e1", 6, 9, {"ts": 9, "thread_id": thread})
    assert f.h.slot(C) is None
    check_deltas(f.h)


def test_unknown_events_are_accepted_then_fold_rules_apply(f: FedHarness) -> None:
    # Unknown event: accepted at once, position unknown.
    assert [x.outcome for x in folded(f.read(C, "$u2", 1))] == [Outcome.APPLIED]
    assert f.h.slot(C) == Receipt("$u2", None, 1, {"ts": 1})
    # Either position unknown: the newer arrival wins, even "backwards".
    f.read(C, "$e1", 2)
    assert f.h.slot(C) == Receipt("$e1", 6, 2, {"ts": 2})
    f.read(C, "$u1", 3)
    assert f.h.slot(C) == Receipt("$u1", None, 3, {"ts": 3})
    # The remote events arrive; from then on the slot never moves back.
    f.h.event("$u1")  # pos 10
    f.h.event("$u2")  # pos 11
    f.h.event("$e5")  # pos 12
    assert [x.outcome for x in folded(f.read(C, "$e2", 4))] == [Outcome.UNCHANGED]
    assert f.h.slot(C).event_id == "$u1"
    f.read(C, "$u2", 5)
    assert f.h.slot(C) == Receipt("$u2", 11, 5, {"ts": 5})
    f.read(C, "$u1", 6)
    assert f.h.slot(C).event_id == "$u2"
    f.read(C, "$e5", 7)
    assert f.h.slot(C) == Receipt("$e5", 12, 7, {"ts": 7})


def test_remote_receipt_stored_before_its_event_does_not_move_back(f: FedHarness) -> None:
    f.read(C, "$late", 1)
    assert f.h.slot(C) == Receipt("$late", None, 1, {"ts": 1})
    f.h.event("$late")  # pos 10: newer than every $eN
    assert [x.outcome for x in folded(f.read(C, "$e1", 2))] == [Outcome.UNCHANGED]
    assert f.h.slot(C).event_id == "$late"


def test_remote_users_receipts_are_never_federated(f: FedHarness) -> None:
    for user, ts in ((C, 1), (D, 2), (E, 3)):
        routed = f.read(user, "$e2", ts)
        assert [x.outcome for x in folded(routed)] == [Outcome.APPLIED]
        assert emits(routed, FEDERATION_OUT) == []
    # Replayed too.
    split = f.split("hs2", f.edu_value("hs2", {ROOM: {"m.read": {C: entry("$e2", 1)}}}))
    routed = f.route(emits(split, FEDERATION_IN)[0])
    assert [x.outcome for x in folded(routed)] == [Outcome.REPLAYED]
    assert emits(f.h.effects, FEDERATION_OUT) == []


def test_replayed_inbound_entry_changes_nothing(f: FedHarness) -> None:
    split = f.split("hs2", f.edu_value("hs2", {ROOM: {"m.read": {C: entry("$e2")}}}))
    (emit,) = emits(split, FEDERATION_IN)
    f.route(emit)
    log = list(f.h.receipts.log)
    assert [x.outcome for x in folded(f.route(emit))] == [Outcome.REPLAYED]
    assert f.h.receipts.log == log


# --- outbound ----------------------------------------------------------------------------


def test_local_read_change_goes_to_every_other_server(f: FedHarness) -> None:
    effects = f.h.receipt(A, "m.read", "$e2", ts=77)
    (out,) = emits(effects, FEDERATION_OUT)
    assert out.key == ROOM.encode()
    assert orjson.loads(out.value) == {
        "room_id": ROOM,
        "user_id": A,
        "thread_id": None,
        "event_id": "$e2",
        "data": {"ts": 77},
        "destinations": ["hs2", "hs3", "hs4"],
    }


def test_threaded_local_read_carries_its_thread(f: FedHarness) -> None:
    f.h.event("$root")  # pos 10
    f.h.event("$t1", rel=("m.thread", "$root"))  # pos 11
    (rec,) = outbox(f.h.receipt(A, "m.read", "$t1", thread_id="$root"))
    assert rec["thread_id"] == "$root" and rec["data"]["thread_id"] == "$root"
    (rec,) = outbox(f.h.receipt(A, "m.read", "$e1", thread_id="main"))
    assert rec["thread_id"] == "main" and rec["data"]["thread_id"] == "main"


@pytest.mark.parametrize("receipt_type", ["m.read.private", "m.fully_read"])
def test_private_and_fully_read_are_never_federated(f: FedHarness, receipt_type: str) -> None:
    effects = f.h.receipt(A, receipt_type, "$e2")
    assert [x.outcome for x in folded(effects)] == [Outcome.APPLIED]
    assert emits(effects, FEDERATION_OUT) == []


def test_unchanged_receipt_is_not_federated(f: FedHarness) -> None:
    assert len(outbox(f.h.receipt(A, "m.read", "$e3", ts=1))) == 1
    older = f.h.receipt(A, "m.read", "$e1", ts=2)
    same_event = f.h.receipt(A, "m.read", "$e3", ts=3)
    for effects in (older, same_event):
        assert [x.outcome for x in folded(effects)] == [Outcome.UNCHANGED]
        assert emits(effects, FEDERATION_OUT) == []


def test_replayed_record_is_federated_again(f: FedHarness) -> None:
    """Crash recovery: the table write survived, the outbox record may not have."""
    raw = orjson.dumps(f.h.receipt_value(A, "m.read", "$e2", ts=5))
    src = f.h.source(CLIENT, raw, ROOM.encode())
    first = f.h.feed(src)
    again = f.h.feed(Source(src.topic, src.partition, src.offset, src.key, src.value))
    assert [x.outcome for x in folded(again)] == [Outcome.REPLAYED]
    assert outbox(again) == outbox(first) and len(outbox(again)) == 1


def test_destinations_follow_membership(f: FedHarness) -> None:
    f.h.member("@d2:hs3")
    f.h.member(D, "leave")
    (rec,) = outbox(f.h.receipt(A, "m.read", "$e1"))
    assert rec["destinations"] == ["hs2", "hs3", "hs4"]  # @d2 is still there
    f.h.member("@d2:hs3", "ban")
    (rec,) = outbox(f.h.receipt(A, "m.read", "$e2"))
    assert rec["destinations"] == ["hs2", "hs4"]
    f.h.member(E, "leave")
    f.h.member(C, "leave")
    effects = f.h.receipt(B, "m.read", "$e3")  # only hs1 is left
    assert [x.outcome for x in folded(effects)] == [Outcome.APPLIED]
    assert emits(effects, FEDERATION_OUT) == []


def test_room_with_only_local_members_has_no_outbox() -> None:
    h = Harness(Limits(server_name="hs1"))
    h.member(A)
    h.member(B)
    h.event("$e1")
    assert emits(h.receipt(A, "m.read", "$e1"), FEDERATION_OUT) == []


def test_outbox_to_edus_end_to_end(f: FedHarness) -> None:
    """Outbox records through the queue: each EDU valid by the spec, the newest per slot."""
    f.h.event("$root")  # pos 10
    f.h.event("$t1", rel=("m.thread", "$root"))  # pos 11
    q = OutboundQueue("hs1")
    for n in range(1, 5):
        for r in outbox(f.h.receipt(A, "m.read", f"$e{n}", ts=n)):
            q.add(r, source=n)
    for r in outbox(f.h.receipt(A, "m.read", "$t1", thread_id="$root", ts=9)):
        q.add(r, source=9)
    for r in outbox(f.h.receipt(B, "m.read", "$e1", ts=10)):
        q.add(r, source=10)
    edus = q.flush(T0)
    assert sorted(e["destination"] for e in edus) == ["hs2", "hs2", "hs3", "hs3", "hs4", "hs4"]
    for edu in edus:
        validate_federation_receipt_edu({"edu_type": edu["edu_type"], "content": edu["content"]})
    got = {
        (e["destination"], e["content"][ROOM]["m.read"][A]["data"].get("thread_id")): e["content"][
            ROOM
        ]["m.read"][A]["event_ids"][0]
        for e in edus
    }
    assert got == {
        (d, t): ev for d in ("hs2", "hs3", "hs4") for t, ev in ((None, "$e4"), ("$root", "$t1"))
    }
    # Receiving what we sent as hs2 would: another processor accepts every entry.
    other = FedHarness(server_name="hs2")
    other.h.member(A)
    other.h.member(C)
    for edu in edus:
        if edu["destination"] == "hs2":
            split, routed = other.edu("hs1", edu["content"])
            assert dlqs(split) == [] and dlqs(routed) == []
    assert {k.thread_id for k in other.h.table() if k.user_id == A} == {None, "$root"}


def test_an_edu_claiming_to_come_from_this_server_is_refused() -> None:
    from receipt_streams.core.dlq import Source
    from receipt_streams.core.processor import Limits, Processor

    processor = Processor({}, {}, {}, Limits(server_name="hs1"))
    value = orjson.dumps(
        {
            "origin": "hs1",
            "received_ts": 1,
            "edu": {
                "edu_type": "m.receipt",
                "content": {
                    "!r:hs1": {"m.read": {"@a:hs1": {"event_ids": ["$e"], "data": {"ts": 1}}}}
                },
            },
        }
    )
    effects = processor.federation_edu(Source("fed", 0, 0, b"hs1", value), 0)
    assert [e.reason for e in effects] == ["origin_mismatch"]


def test_pacing_state_is_forgotten_once_a_room_is_idle() -> None:
    from receipt_streams.core.federation import OutboundQueue

    queue = OutboundQueue("hs1", large_room_servers=2, large_room_interval_ms=100)
    record = {
        "room_id": "!big:hs1",
        "user_id": "@a:hs1",
        "thread_id": None,
        "event_id": "$e",
        "data": {"ts": 1},
        "destinations": ["hs2", "hs3"],
    }
    queue.add(record)
    assert len(queue.flush(0)) == 2
    assert queue.flush(50) == [] and queue._room_size
    assert queue.flush(150) == [] and not queue._room_size and not queue._room_flushed
