"""Which thread an event is in: m.thread relations, followed at most 3 hops."""

from __future__ import annotations

import pytest

from receipt_streams.core.threads import MAIN, MAX_HOPS, EventInfo, thread_of

ANNOTATION, REFERENCE, REPLACE, THREAD = "m.annotation", "m.reference", "m.replace", "m.thread"

EVENTS: dict[str, EventInfo] = {
    "$root": EventInfo(1, "@a:hs1"),
    "$plain": EventInfo(2, "@a:hs1"),
    "$t1": EventInfo(3, "@b:hs1", THREAD, "$root"),
    "$t2": EventInfo(4, "@b:hs1", THREAD, "$root"),
    "$react_t1": EventInfo(5, "@c:hs1", ANNOTATION, "$t1"),  # annotation of a threaded event
    "$react_root": EventInfo(6, "@c:hs1", ANNOTATION, "$root"),  # annotation of the root
    "$edit_t1": EventInfo(7, "@b:hs1", REPLACE, "$t1"),
    "$ref_react": EventInfo(8, "@c:hs1", REFERENCE, "$react_t1"),  # 3 hops to the root
    "$deep": EventInfo(9, "@c:hs1", REFERENCE, "$ref_react"),  # 4 hops: too deep
    "$react_plain": EventInfo(10, "@c:hs1", ANNOTATION, "$plain"),
    "$orphan": EventInfo(11, "@c:hs1", ANNOTATION, "$never_seen"),
    "$t_unknown_root": EventInfo(12, "@c:hs1", THREAD, "$root_not_seen"),
    "$root2": EventInfo(13, "@a:hs1"),
    "$t3": EventInfo(14, "@b:hs1", THREAD, "$root2"),
    "$cycle_a": EventInfo(15, "@c:hs1", ANNOTATION, "$cycle_b"),
    "$cycle_b": EventInfo(16, "@c:hs1", ANNOTATION, "$cycle_a"),
}


def lookup(event_id: str) -> EventInfo | None:
    return EVENTS.get(event_id)


@pytest.mark.parametrize(
    ("event_id", "thread"),
    [
        ("$t1", "$root"),  # m.thread relation
        ("$t2", "$root"),
        ("$t3", "$root2"),
        ("$react_t1", "$root"),  # annotation of a threaded event -> that thread
        ("$edit_t1", "$root"),
        ("$ref_react", "$root"),  # exactly 3 hops
        ("$root", MAIN),  # the root itself is in main
        ("$react_root", MAIN),  # annotation of a thread root -> main
        ("$plain", MAIN),
        ("$react_plain", MAIN),
        ("$deep", MAIN),  # more than 3 hops -> main
        ("$orphan", MAIN),  # unknown parent -> main
        ("$never_seen", MAIN),  # unknown event -> main
        ("$t_unknown_root", "$root_not_seen"),  # the m.thread relation alone names the thread
        ("$cycle_a", MAIN),  # a relation cycle ends within the hop limit
    ],
)
def test_thread_of(event_id: str, thread: str) -> None:
    assert thread_of(event_id, lookup) == thread


def test_hop_limit_is_three() -> None:
    assert MAX_HOPS == 3
    chain = {"$r": EventInfo(0, "@a:hs1"), "$h0": EventInfo(1, "@a:hs1", THREAD, "$r")}
    for i in range(1, 6):
        chain[f"$h{i}"] = EventInfo(i + 1, "@a:hs1", ANNOTATION, f"$h{i - 1}")
    # $h{n} needs n annotation hops plus the m.thread hop.
    results = {n: thread_of(f"$h{n}", chain.get) for n in range(6)}
    assert results == {0: "$r", 1: "$r", 2: "$r", 3: MAIN, 4: MAIN, 5: MAIN}


def test_lookups_are_bounded() -> None:
    calls: list[str] = []

    def counting(event_id: str) -> EventInfo | None:
        calls.append(event_id)
        return EVENTS.get(event_id)

    thread_of("$cycle_a", counting)
    assert len(calls) <= MAX_HOPS
