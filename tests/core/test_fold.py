"""The fold rule: receipts never move backwards (CONTRACT §4.2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.fold import Outcome, fold
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data


def r(event_id: str, pos: int | None, ts: int = 1, thread_id: str | None = None) -> Receipt:
    return Receipt(event_id, pos, ts, client_data(ts, thread_id))


def test_empty_slot_takes_anything() -> None:
    assert fold(None, r("$a", 1)) is Outcome.APPLIED
    assert fold(None, r("$a", None)) is Outcome.APPLIED


def test_newer_event_replaces() -> None:
    assert fold(r("$a", 1), r("$b", 2)) is Outcome.APPLIED


def test_older_receipt_is_ignored_even_with_a_later_ts() -> None:
    assert fold(r("$b", 5, ts=10), r("$a", 4, ts=99)) is Outcome.UNCHANGED


def test_exact_replay_is_replayed() -> None:
    current = r("$a", 3, ts=7)
    assert fold(current, r("$a", 3, ts=7)) is Outcome.REPLAYED
    # ... also after a trip through the changelog bytes.
    assert fold(Receipt.decode(current.encode()), current) is Outcome.REPLAYED


def test_duplicate_on_the_same_event_changes_nothing() -> None:
    # Same event, another ts (a client re-sending its receipt): not a change, nothing emitted.
    assert fold(r("$a", 3, ts=7), r("$a", 3, ts=8)) is Outcome.UNCHANGED
    assert fold(r("$a", 3, ts=8), r("$a", 3, ts=7)) is Outcome.UNCHANGED


def test_same_event_is_never_reapplied_whatever_the_positions() -> None:
    # A remote receipt stored before its event was known, then the same event again.
    assert fold(r("$a", None, ts=1), r("$a", 9, ts=2)) is Outcome.UNCHANGED
    assert fold(r("$a", 9, ts=1), r("$a", None, ts=2)) is Outcome.UNCHANGED


def test_equal_positions_of_different_events_do_not_replace() -> None:
    assert fold(r("$a", 3), r("$b", 3)) is Outcome.UNCHANGED


def test_unknown_position_newer_arrival_wins() -> None:
    assert fold(r("$a", 10), r("$b", None)) is Outcome.APPLIED
    assert fold(r("$a", None), r("$b", 1)) is Outcome.APPLIED
    assert fold(r("$a", None), r("$b", None)) is Outcome.APPLIED


def test_receipt_and_key_bytes_round_trip() -> None:
    key = ReceiptKey("!r:hs1", "@a:hs1", "m.read", None)
    assert key.encode() == b'["!r:hs1","@a:hs1","m.read",null]'
    assert ReceiptKey.decode(key.encode()) == key
    threaded = ReceiptKey("!r:hs1", "@a:hs1", "m.read", "main")
    assert ReceiptKey.decode(threaded.encode()) == threaded != key
    value = Receipt("$e", None, 5, {"ts": 5, "extra": [1, {"x": None}]})
    assert Receipt.decode(value.encode()) == value
    assert orjson_keys(value.encode()) == {"event_id", "stream_pos", "ts", "data"}


def orjson_keys(raw: bytes) -> set[str]:
    import orjson

    return set(orjson.loads(raw))


def test_client_data() -> None:
    assert client_data(5, None) == {"ts": 5}
    assert client_data(5, "main") == {"ts": 5, "thread_id": "main"}


events = st.sampled_from(["$a", "$b", "$c", "$d"])
positions = st.one_of(st.none(), st.integers(0, 5))
receipts = st.builds(r, events, positions, st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(receipts, receipts)
def test_fold_outcome_is_consistent(current: Receipt, incoming: Receipt) -> None:
    outcome = fold(current, incoming)
    if current == incoming:
        assert outcome is Outcome.REPLAYED
    elif current.event_id == incoming.event_id:
        assert outcome is Outcome.UNCHANGED
    elif current.stream_pos is None or incoming.stream_pos is None:
        assert outcome is Outcome.APPLIED
    else:
        assert (outcome is Outcome.APPLIED) == (incoming.stream_pos > current.stream_pos)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(events, st.integers(0, 20), st.integers(0, 3)), min_size=1))
def test_known_positions_never_move_backwards(items: list[tuple[str, int, int]]) -> None:
    # Give each event one position, as the room's event stream does.
    pos_of: dict[str, int] = {}
    for event_id, pos, _ in items:
        pos_of.setdefault(event_id, pos)
    current: Receipt | None = None
    for event_id, _, ts in items:
        incoming = r(event_id, pos_of[event_id], ts)
        before = current
        if fold(current, incoming) is Outcome.APPLIED:
            current = incoming
        if before is not None:
            assert current is not None and current.stream_pos >= before.stream_pos
    best = max(pos_of[e] for e, _, _ in items)
    assert current is not None and current.stream_pos == best
    # The first receipt on the best event stays (later ones on it change nothing).
    first = next((e, ts) for e, _, ts in items if pos_of[e] == best)
    assert (current.event_id, current.ts) == first
