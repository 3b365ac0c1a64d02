"""Properties of the whole fold (Processor over dict stores), checked with hypothesis:
replay determinism, batching independence of the deltas, and a reference model."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from receipt_streams.core.deltas import apply_delta, plan_deltas, table_view
from receipt_streams.core.fold import Outcome
from receipt_streams.core.processor import Folded, Limits, PutOnHold
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from tests.core.harness import CLIENT, ROOM, T0, Harness, dlq_reasons, dlqs
from tests.support.spec import validate_receipt_event

USERS = ["@a:hs1", "@b:hs1", "@c:hs2"]
TYPES = ["m.read", "m.read.private", "m.fully_read"]
# The room's events: name -> relation. Parents come before children in this order.
RELATIONS: dict[str, tuple[str, str] | None] = {
    "$m1": None,
    "$root": None,
    "$t1": ("m.thread", "$root"),
    "$m2": None,
    "$r1": ("m.annotation", "$t1"),  # in the thread of $root
    "$rr": ("m.annotation", "$root"),  # in main
    "$t2": ("m.thread", "$root"),
    "$m3": None,
}
THREAD = {
    "$m1": "main",
    "$root": "main",
    "$t1": "$root",
    "$m2": "main",
    "$r1": "$root",
    "$rr": "main",
    "$t2": "$root",
    "$m3": "main",
}
EVENTS = list(RELATIONS)
SETTINGS = settings(max_examples=200, deadline=None)

Op = tuple[Any, ...]

receipt_ops = st.tuples(
    st.just("receipt"),
    st.sampled_from([*USERS, "@a:hs1"]),
    st.sampled_from(TYPES),
    st.sampled_from([*EVENTS[:4], *EVENTS, "$ghost"]),
    st.sampled_from([None, None, None, "main", "$root", ""]),
    st.integers(0, 1_000),
)
any_op = st.one_of(
    receipt_ops,
    receipt_ops,
    receipt_ops,
    receipt_ops,
    st.tuples(
        st.just("member"),
        st.sampled_from(USERS),
        st.sampled_from(["join", "join", "join", "leave", "ban", "invite"]),
    ),
    st.tuples(st.just("event"), st.sampled_from(EVENTS)),
    st.tuples(st.just("advance"), st.integers(0, 15_000)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("garbage"), st.binary(max_size=8)),
)


# Two joined users and some known events, so that random ops reach the fold often.
SETUP: list[Op] = [("member", "@a:hs1", "join"), ("member", "@b:hs1", "join")] + [
    ("event", e) for e in EVENTS[:4]
]


def run(ops: list[Op], limits: Limits | None = None) -> Harness:
    h = Harness(limits or Limits(grace_ms=10_000, held_per_dep=3))
    for op in ops:
        apply(h, op)
    return h


def apply(h: Harness, op: Op) -> None:
    kind = op[0]
    if kind == "receipt":
        _, user, receipt_type, event_id, thread_id, ts = op
        value = h.receipt_value(user, receipt_type, event_id, ts=T0 + ts)
        if thread_id is not None:
            value["thread_id"] = thread_id  # "" included: invalid_thread
        h.send(CLIENT, value)
    elif kind == "member":
        h.member(op[1], op[2])
    elif kind == "event":
        h.event(op[1], rel=RELATIONS[op[1]])
    elif kind == "advance":
        h.now += op[1]
    elif kind == "tick":
        h.tick()
    elif kind == "garbage":
        h.send(CLIENT, op[1])


@SETTINGS
@given(st.lists(any_op, min_size=5, max_size=50))
def test_replay_gives_the_same_table_and_effects(ops: list[Op]) -> None:
    first, second = run(SETUP + ops), run(SETUP + ops)
    for reason in set(dlq_reasons(first.effects)):
        event(f"dlq {reason}")
    if any(isinstance(e, PutOnHold) for e in first.effects):
        event("held")
    if any(isinstance(e, Folded) for e in first.effects):
        event("folded")
    assert second.receipts == first.receipts
    assert second.receipts.log == first.receipts.log
    assert second.state == first.state
    assert second.held == first.held
    assert second.effects == first.effects
    # Nothing lost, nothing doubled: each client record ends folded (once), in the DLQ
    # (once), or still held.
    records = sum(1 for op in SETUP + ops if op[0] in ("receipt", "garbage"))
    ended = sum(1 for e in first.effects if isinstance(e, Folded)) + sum(
        1 for e in dlqs(first.effects) if e.topic == CLIENT
    )
    still_held = sum(len(entries) for entries in first.held_entries().values())
    assert ended + still_held == records


@SETTINGS
@given(st.lists(any_op, min_size=5, max_size=50))
def test_table_only_changes_through_applied_folds(ops: list[Op]) -> None:
    h = run(SETUP + ops)
    applied = [e for e in h.effects if isinstance(e, Folded) and e.outcome is Outcome.APPLIED]
    assert [(key, value) for _, key, value in h.receipts.log] == [
        (f.key.encode(), f.receipt.encode()) for f in applied
    ]
    # Receipts with known positions never move backwards.
    latest: dict[ReceiptKey, Receipt] = {}
    for f in applied:
        before = latest.get(f.key)
        if before is not None and before.stream_pos is not None:
            assert f.receipt.stream_pos is not None
            assert f.receipt.stream_pos > before.stream_pos
        latest[f.key] = f.receipt
    assert latest == h.table()


# --- all events known, all users joined: a reference model --------------------------------


@st.composite
def event_order(draw: st.DrawFn) -> list[str]:
    """A random stream order of the room's events with every parent before its children."""
    order: list[str] = []
    left = list(EVENTS)
    while left:
        ready = [e for e in left if RELATIONS[e] is None or RELATIONS[e][1] in order]
        pick = draw(st.sampled_from(ready))
        order.append(pick)
        left.remove(pick)
    return order


known_receipts = st.lists(
    st.tuples(
        st.just("receipt"),
        st.sampled_from(USERS),
        st.sampled_from(TYPES),
        st.sampled_from(EVENTS),
        st.sampled_from([None, "main", "$root"]),
        st.integers(0, 1_000),
    ),
    max_size=40,
)


def valid(receipt_type: str, event_id: str, thread_id: str | None) -> bool:
    if thread_id is None:
        return True
    return receipt_type != "m.fully_read" and THREAD[event_id] == thread_id


def reference(order: list[str], ops: list[Op]) -> dict[ReceiptKey, Receipt]:
    """Max by stream_pos per slot; the first receipt on the best event stays."""
    pos = {e: i for i, e in enumerate(order, start=len(USERS) + 1)}
    table: dict[ReceiptKey, Receipt] = {}
    for _, user, receipt_type, event_id, thread_id, ts in ops:
        if not valid(receipt_type, event_id, thread_id):
            continue
        key = ReceiptKey(ROOM, user, receipt_type, thread_id)
        current = table.get(key)
        if current is None or pos[event_id] > current.stream_pos:
            table[key] = Receipt(event_id, pos[event_id], T0 + ts, client_data(T0 + ts, thread_id))
    return table


@SETTINGS
@given(event_order(), known_receipts)
def test_final_table_equals_the_reference_model(order: list[str], ops: list[Op]) -> None:
    setup = [("member", u, "join") for u in USERS] + [("event", e) for e in order]
    h = run(setup + ops)
    assert h.table() == reference(order, ops)
    invalid = sum(1 for op in ops if not valid(op[2], op[3], op[4]))
    assert len(dlq_reasons(h.effects)) == invalid
    assert set(dlq_reasons(h.effects)) <= {"thread_mismatch", "invalid_thread"}
    assert h.held == {}


@st.composite
def interleaved(draw: st.DrawFn) -> tuple[list[str], list[Op], list[Op]]:
    """Receipts, joins and events (in stream order) interleaved at random, no expiry."""
    order = draw(event_order())
    receipts = draw(known_receipts)
    deps: list[Op] = [("member", u, "join") for u in USERS]
    deps = draw(st.permutations(deps))
    deps = [*deps, *(("event", e) for e in order)]
    # Merge keeping both sequences' own order (events stay in stream order).
    merged: list[Op] = []
    i = j = 0
    while i < len(receipts) or j < len(deps):
        if j == len(deps) or (i < len(receipts) and draw(st.booleans())):
            merged.append(receipts[i])
            i += 1
        else:
            merged.append(deps[j])
            j += 1
    return order, receipts, merged


@SETTINGS
@given(interleaved())
def test_held_receipts_end_where_the_reference_model_says(
    case: tuple[list[str], list[Op], list[Op]],
) -> None:
    _, receipts, merged = case
    h = Harness()  # default grace: no tick happens, nothing expires
    for op in merged:
        run_one(h, op)
    event(f"held {sum(1 for e in h.effects if isinstance(e, PutOnHold)) > 0}")
    # Positions follow arrival, so they can differ from `reference`'s numbering: compare events.
    got = {k: v.event_id for k, v in h.table().items()}
    pos: dict[str, int] = {}
    for op in merged:
        if op[0] in ("member", "event"):
            pos[op[1]] = len(pos) + 1
    best: dict[ReceiptKey, str] = {}
    for _, user, receipt_type, event_id, thread_id, _ts in receipts:
        if valid(receipt_type, event_id, thread_id):
            key = ReceiptKey(ROOM, user, receipt_type, thread_id)
            if key not in best or pos[event_id] > pos[best[key]]:
                best[key] = event_id
    assert got == best
    assert h.held == {}


def run_one(h: Harness, op: Op) -> None:
    if op[0] == "receipt":
        _, user, receipt_type, event_id, thread_id, ts = op
        h.receipt(user, receipt_type, event_id, thread_id=thread_id, ts=T0 + ts)
    elif op[0] == "member":
        h.member(op[1], op[2])
    else:
        h.event(op[1], rel=RELATIONS[op[1]])


# --- deltas from the processor's changelog, however the batches are cut ------------------


@st.composite
def clash_free(draw: st.DrawFn) -> tuple[list[str], list[Op]]:
    """Each user is always unthreaded or always in the event's own thread (so no delta hides a
    threaded receipt behind an unthreaded one, MSC4102), and some events come late."""
    order = draw(event_order())
    threaded = {u: draw(st.booleans()) for u in USERS}
    ops: list[Op] = []
    for _, user, receipt_type, event_id, _thread, ts in draw(known_receipts):
        thread_id = THREAD[event_id] if threaded[user] and receipt_type != "m.fully_read" else None
        ops.append(("receipt", user, receipt_type, event_id, thread_id, ts))
    return order, ops


@SETTINGS
@given(clash_free(), st.data())
def test_deltas_rebuild_the_table_however_the_changelog_is_cut(
    case: tuple[list[str], list[Op]], data: st.DataObject
) -> None:
    order, ops = case
    split = data.draw(st.integers(0, len(order)), label="events before receipts")
    setup: list[Op] = [("member", u, "join") for u in USERS]
    h = run(
        setup + [("event", e) for e in order[:split]] + ops + [("event", e) for e in order[split:]]
    )
    log = h.receipts.log
    points = sorted(data.draw(st.sets(st.integers(1, max(len(log), 1)), max_size=6)))
    bounds = [0, *[p for p in points if p < len(log)], len(log)]
    view: dict = {}
    last_seq = -1
    for a, b in itertools.pairwise(bounds):
        for delta in plan_deltas(log[a:b], now_ms=0):
            assert delta["seq"] == b - 1 > last_seq
            last_seq = delta["seq"]
            if "receipt" in delta:
                validate_receipt_event(delta["receipt"])
            for owner, private in delta.get("private", {}).items():
                validate_receipt_event(private)
                assert {
                    u
                    for by_type in private["content"].values()
                    for users in by_type.values()
                    for u in users
                } == {owner}
            apply_delta(view, delta)
    assert view == table_view(h.table().items())
    # Per slot: the table holds each key's latest changelog value.
    latest = {ReceiptKey.decode(k): Receipt.decode(v) for _, k, v in log}
    assert latest == h.table()
