"""The state backends of the batch fold (`TableStore`: `MemoryStore`, `RocksStore`) and the
`Overlay` a batch is folded through.

Every store test runs against both backends; `RocksStore` lives in the test's `tmp_path`, and
the tests that need a restart close it and open the same path again.
"""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.adapters.engine.stores import (
    _OFFSET_KEY,
    MemoryStore,
    Overlay,
    RocksMemory,
    RocksStore,
    TableStore,
)

BACKENDS = ["memory", "rocks", "rocks-indexed", "rocks-cached"]

A, B, C, D = b'["a"]', b'["b"]', b'["c"]', b'["d"]'
TWO_ENTRIES = 2 * RocksStore.entry_cost(A, b"1")  # two of these keys with one-byte values


def open_store(backend: str, path: Path) -> TableStore:
    if backend == "memory":
        return MemoryStore()
    if backend == "rocks-cached":
        return RocksStore(path, cache_bytes=TWO_ENTRIES)  # tiny: entries come and go all the time
    return RocksStore(path, index_keys=backend == "rocks-indexed")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TableStore]:
    opened = open_store(request.param, tmp_path / "store")
    yield opened
    opened.close()


@pytest.fixture
def rocks_path(tmp_path: Path) -> Path:
    return tmp_path / "stores" / "receipts-0"


def contents(store: TableStore) -> dict[bytes, bytes]:
    items = list(store.items())
    as_dict = dict(items)
    assert len(as_dict) == len(items), f"items() yielded a key twice: {items}"
    return as_dict


# --- TableStore ------------------------------------------------------------------------


def test_a_new_store_is_empty_and_has_no_offset(store: TableStore) -> None:
    assert store.offset is None
    assert contents(store) == {}
    assert store.get(A) is None


def test_apply_writes_and_records_the_offset(store: TableStore) -> None:
    store.apply({A: b"1", B: b"2"}, 7)

    assert store.get(A) == b"1"
    assert store.get(B) == b"2"
    assert store.get(C) is None
    assert contents(store) == {A: b"1", B: b"2"}
    assert store.offset == 7


def test_apply_overwrites_and_deletes_with_none(store: TableStore) -> None:
    store.apply({A: b"1", B: b"2", C: b"3"}, 1)
    store.apply({A: b"10", B: None, D: b"4"}, 2)

    assert contents(store) == {A: b"10", C: b"3", D: b"4"}
    assert store.get(B) is None
    assert store.offset == 2


def test_deleting_a_missing_key_is_a_no_op(store: TableStore) -> None:
    store.apply({A: b"1"}, 3)
    store.apply({B: None}, 4)

    assert contents(store) == {A: b"1"}
    assert store.offset == 4


def test_apply_without_an_offset_keeps_the_last_one(store: TableStore) -> None:
    store.apply({A: b"1"}, 5)
    store.apply({B: b"2"}, None)

    assert contents(store) == {A: b"1", B: b"2"}
    assert store.offset == 5


def test_apply_without_an_offset_on_a_new_store_leaves_it_without_one(store: TableStore) -> None:
    store.apply({A: b"1"}, None)

    assert store.offset is None
    assert contents(store) == {A: b"1"}


def test_an_empty_batch_can_still_advance_the_offset(store: TableStore) -> None:
    store.apply({A: b"1"}, 1)
    store.apply({}, 9)

    assert store.offset == 9
    assert contents(store) == {A: b"1"}


def test_the_offset_stays_when_every_key_is_deleted(store: TableStore) -> None:
    store.apply({A: b"1"}, 1)
    store.apply({A: None}, 2)

    assert contents(store) == {}
    assert store.offset == 2


def test_offset_zero_is_an_offset(store: TableStore) -> None:
    store.apply({A: b"1"}, 0)
    assert store.offset == 0


def test_items_never_yield_the_internal_offset_key(store: TableStore) -> None:
    store.apply({A: b"1", B: b"2"}, 12)
    store.apply({B: None}, 13)

    keys = [key for key, _ in store.items()]
    assert _OFFSET_KEY not in keys
    assert keys == [A]


def test_empty_and_binary_values_round_trip(store: TableStore) -> None:
    binary = bytes(range(256))
    store.apply({A: b"", B: binary}, 1)

    assert store.get(A) == b""
    assert store.get(B) == binary
    assert contents(store) == {A: b"", B: binary}


def test_rocks_store_keeps_data_and_offset_across_close_and_reopen(rocks_path: Path) -> None:
    first = RocksStore(rocks_path)
    first.apply({A: b"1", B: b"2", C: b"3"}, 41)
    first.apply({B: None, C: b"30"}, 42)
    first.close()

    again = RocksStore(rocks_path)
    try:
        assert again.offset == 42
        assert contents(again) == {A: b"1", C: b"30"}
        assert again.get(B) is None
    finally:
        again.close()


def test_rocks_store_reopened_without_any_offset_still_has_none(rocks_path: Path) -> None:
    first = RocksStore(rocks_path)
    assert first.offset is None
    first.apply({A: b"1"}, None)
    first.close()

    again = RocksStore(rocks_path)
    try:
        assert again.offset is None
        assert contents(again) == {A: b"1"}
    finally:
        again.close()


def test_rocks_store_reopens_large_offsets_exactly(rocks_path: Path) -> None:
    first = RocksStore(rocks_path)
    first.apply({A: b"1"}, 2**62 + 3)
    first.close()

    again = RocksStore(rocks_path)
    try:
        assert again.offset == 2**62 + 3
    finally:
        again.close()


class _Exploding(Mapping[bytes, bytes | None]):
    """Writes whose iteration fails part-way, after some puts and deletes were read."""

    def __init__(self, first: dict[bytes, bytes | None]) -> None:
        self.first = first

    def __getitem__(self, key: bytes) -> bytes | None:
        return self.first[key]

    def __len__(self) -> int:
        return len(self.first) + 1

    def __iter__(self) -> Iterator[bytes]:
        yield from self.first
        raise RuntimeError("boom")


def test_rocks_store_apply_is_all_or_nothing(rocks_path: Path) -> None:
    """A batch that fails while it is being built writes neither data nor offset: the data and
    the changelog offset go to RocksDB in one write batch."""
    first = RocksStore(rocks_path)
    first.apply({A: b"1", B: b"2"}, 10)
    with pytest.raises(RuntimeError, match="boom"):
        first.apply(_Exploding({A: b"changed", B: None, C: b"new"}), 11)

    assert first.offset == 10
    assert contents(first) == {A: b"1", B: b"2"}
    first.close()

    again = RocksStore(rocks_path)
    try:
        assert again.offset == 10
        assert contents(again) == {A: b"1", B: b"2"}
    finally:
        again.close()


def test_an_indexed_rocks_store_knows_its_keys_again_after_a_reopen(rocks_path: Path) -> None:
    first = RocksStore(rocks_path, index_keys=True)
    first.apply({A: b"1", B: b"2", C: b"3"}, 1)
    first.apply({B: None}, 2)
    first.close()

    again = RocksStore(rocks_path, index_keys=True)
    try:
        assert (again.get(A), again.get(B), again.get(C), again.get(D)) == (b"1", None, b"3", None)
        again.apply({D: b"4", A: None}, 3)
        assert (again.get(A), again.get(D)) == (None, b"4")
        assert contents(again) == {C: b"3", D: b"4"}
    finally:
        again.close()


def test_the_cache_keeps_the_latest_reads_and_follows_every_write(rocks_path: Path) -> None:
    store = RocksStore(rocks_path, cache_bytes=TWO_ENTRIES)
    try:
        store.apply({A: b"1", B: b"2", C: b"3"}, 1)
        assert list(store._cache) == []  # writes alone fill nothing (a restore writes all)
        assert (store.get(B), store.get(C), store.get(D)) == (b"2", b"3", None)
        assert list(store._cache) == [C, D]  # the last two read; an absent key too
        store.apply({D: b"4", C: None}, 2)
        assert store._cache == {C: None, D: b"4"}  # cached entries follow the writes
        assert (store.get(C), store.get(D), store.get(A)) == (None, b"4", b"1")
    finally:
        store.close()
    again = RocksStore(rocks_path, cache_bytes=TWO_ENTRIES)
    try:
        assert contents(again) == {A: b"1", B: b"2", D: b"4"}
    finally:
        again.close()


def test_the_cache_is_bounded_by_the_bytes_it_holds(rocks_path: Path) -> None:
    big, small = b"x" * 1000, b"y"
    cost = RocksStore.entry_cost
    store = RocksStore(rocks_path, cache_bytes=cost(A, big) + 2 * cost(B, small))
    try:
        store.apply({A: big, B: small, C: small, D: small}, 1)
        assert [store.get(k) for k in (B, C, D)] == [small] * 3
        assert list(store._cache) == [B, C, D]
        assert store.get(A) == big  # one entry's worth too much: the oldest goes
        assert list(store._cache) == [C, D, A]
        assert store.cached_bytes == cost(A, big) + 2 * cost(B, small) == store.cache_bytes
        store.apply({D: big}, 2)  # a cached entry grows: the oldest go, first in first out
        assert store._cache == {A: big}
        assert store.cached_bytes == cost(A, big)
        assert [store.get(k) for k in (A, B, C, D)] == [big, small, small, big]
    finally:
        store.close()


def _orjson_records(n: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(n):
        yield (
            orjson.dumps([f"!room{i}:hs0", f"@user{i}:hs0", "m.read", None]),
            orjson.dumps({"event_id": f"$event{i}", "stream_pos": i, "ts": i}),
        )


def test_kept_keys_and_values_cost_their_size_not_orjsons_allocation(rocks_path: Path) -> None:
    # orjson's `dumps` returns bytes in an allocation of about 4 KB: an overlay, a store's
    # cache or its key index that kept them as they come would cost 4 KB an entry.
    n = 2000
    store = RocksStore(rocks_path, index_keys=True, cache_bytes=1 << 30)
    overlay = Overlay(store)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, value in _orjson_records(n):
            overlay.get(key)
            overlay[key] = value
        pending = tracemalloc.get_traced_memory()[0] - before
        store.apply(overlay.seal(), 1)
        for key, _ in _orjson_records(n):
            assert store.get(key) is not None  # now cached: key, value and index entry
        overlay.settle(overlay.sealed[0])
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        store.close()
    assert len(store._cache) == n
    assert pending / n < 600, f"{pending / n:.0f} bytes per pending write"
    assert kept / n < 800, f"{kept / n:.0f} bytes per cached and indexed entry"


def test_rocks_memory_is_shared_and_bounded(tmp_path: Path) -> None:
    memory = RocksMemory(total_bytes=4 << 20, write_buffer_bytes=256 << 10)
    stores = [RocksStore(tmp_path / f"s{i}", memory=memory) for i in range(3)]
    try:
        for n in range(20):
            for store in stores:
                store.apply({b'["k%d-%d"]' % (n, i): b"v" * 200 for i in range(500)}, n)
        assert 0 < memory.usage() <= 5 << 20  # memtables charged to the one cache
        assert stores[0].get(b'["k0-0"]') == b"v" * 200
    finally:
        for store in stores:
            store.close()


def test_rocks_store_destroy_removes_everything(rocks_path: Path) -> None:
    first = RocksStore(rocks_path)
    first.apply({A: b"1"}, 3)
    first.close()

    RocksStore.destroy(rocks_path)
    assert not rocks_path.exists()
    RocksStore.destroy(rocks_path)  # destroying what is gone is fine

    again = RocksStore(rocks_path)
    try:
        assert again.offset is None
        assert contents(again) == {}
    finally:
        again.close()


# --- Overlay ---------------------------------------------------------------------------


@pytest.fixture
def seeded(store: TableStore) -> TableStore:
    store.apply({A: b"1", B: b"2"}, 5)
    return store


def test_overlay_reads_the_store_through(seeded: TableStore) -> None:
    view = Overlay(seeded)

    assert view[A] == b"1"
    assert view.get(B) == b"2"
    assert view.get(C) is None
    assert view.get(C, b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        view[C]
    assert view.pending == {}


def test_overlay_reads_its_pending_writes_first(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[A] = b"new"
    view[C] = b"3"

    assert view[A] == b"new"
    assert view.get(A, b"dflt") == b"new"
    assert view[C] == b"3"
    # Nothing reaches the store before take() + apply().
    assert seeded.get(A) == b"1"
    assert seeded.get(C) is None


def test_overlay_hides_deleted_keys(seeded: TableStore) -> None:
    view = Overlay(seeded)
    del view[A]

    assert A not in view
    assert view.get(A) is None
    assert view.get(A, b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        view[A]
    assert seeded.get(A) == b"1"
    assert view.pending == {A: None}


def test_overlay_set_after_delete_shows_the_new_value(seeded: TableStore) -> None:
    view = Overlay(seeded)
    del view[A]
    view[A] = b"again"

    assert view[A] == b"again"
    assert A in view
    assert dict(view.items()) == {A: b"again", B: b"2"}


def test_overlay_contains(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    del view[B]

    assert A in view  # store only
    assert C in view  # pending only
    assert B not in view  # deleted
    assert D not in view  # nowhere
    assert "a" not in view  # not bytes
    assert 1 not in view


def test_overlay_del_of_a_missing_key_raises_key_error(seeded: TableStore) -> None:
    view = Overlay(seeded)
    with pytest.raises(KeyError):
        del view[C]
    assert view.pending == {}  # a failed delete records nothing

    del view[A]
    with pytest.raises(KeyError):
        del view[A]  # already deleted in this batch
    assert view.pending == {A: None}


def test_overlay_del_of_a_pending_only_key(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    del view[C]

    assert C not in view
    assert view.pending == {C: None}
    assert dict(view) == {A: b"1", B: b"2"}


def test_overlay_len_iteration_and_items_merge_store_and_pending(seeded: TableStore) -> None:
    seeded.apply({C: b"3"}, 6)
    view = Overlay(seeded)
    view[A] = b"10"  # overwrite a stored key
    del view[B]  # delete a stored key
    view[D] = b"4"  # new key
    view[b'["e"]'] = b"5"
    del view[b'["e"]']  # new, then deleted in the same batch

    expected = {A: b"10", C: b"3", D: b"4"}
    items = list(view.items())
    assert dict(items) == expected
    assert len(items) == len(expected)  # every key once
    assert len(view) == 3
    assert sorted(view) == sorted(expected)
    assert sorted(view.keys()) == sorted(expected)
    assert sorted(view.values()) == sorted(expected.values())
    assert dict(view) == expected
    assert view == expected  # Mapping equality


def test_overlay_of_an_empty_store(store: TableStore) -> None:
    view = Overlay(store)
    assert len(view) == 0
    assert list(view) == []

    view[A] = b"1"
    assert len(view) == 1
    assert list(view.items()) == [(A, b"1")]


def test_overlay_mutable_mapping_helpers(seeded: TableStore) -> None:
    view = Overlay(seeded)
    assert view.pop(A) == b"1"
    assert view.pop(A, None) is None
    assert view.setdefault(B, b"other") == b"2"
    assert view.setdefault(C, b"3") == b"3"
    view.update({D: b"4"})

    assert dict(view) == {B: b"2", C: b"3", D: b"4"}
    assert view.pending == {A: None, C: b"3", D: b"4"}


def test_take_hands_over_pending_writes_in_first_write_order(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    del view[A]
    view[D] = b"4"
    view[C] = b"30"  # rewrite: keeps its first position
    view[A] = b"back"  # set after delete: keeps the delete's position

    writes = view.take()

    assert list(writes.items()) == [(C, b"30"), (A, b"back"), (D, b"4")]
    assert view.pending == {}
    # A new batch: reads go to the store again, which has not changed yet.
    assert view[A] == b"1"
    assert C not in view
    assert view.take() == {}


def test_take_returns_deletes_as_none_and_apply_makes_them_stick(seeded: TableStore) -> None:
    view = Overlay(seeded)
    del view[A]
    view[C] = b"3"

    writes = view.take()
    assert writes == {A: None, C: b"3"}

    seeded.apply(writes, 6)
    assert contents(seeded) == {B: b"2", C: b"3"}
    assert dict(view) == {B: b"2", C: b"3"}
    assert seeded.offset == 6


def test_take_hands_over_a_dict_the_overlay_no_longer_touches(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    writes = view.take()
    view[D] = b"4"

    assert writes == {C: b"3"}
    assert view.pending == {D: b"4"}


def test_sealed_writes_stay_visible_until_settled(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    del view[A]
    first = view.seal()

    assert first == {C: b"3", A: None}
    assert view.pending == {}
    # The next batch folds on top of the sealed one, which the store does not hold yet.
    assert view[C] == b"3" and A not in view
    assert dict(view) == {B: b"2", C: b"3"}
    view[C] = b"30"
    second = view.seal()
    assert view[C] == b"30"

    seeded.apply(first, 6)
    view.settle(first)
    assert view.sealed == [second]
    assert dict(view) == {B: b"2", C: b"30"}
    seeded.apply(second, 7)
    view.settle(second)
    assert view.sealed == [] and dict(view) == {B: b"2", C: b"30"} == contents(seeded)


def test_batches_settle_only_in_the_order_they_were_sealed(seeded: TableStore) -> None:
    view = Overlay(seeded)
    view[C] = b"3"
    first = view.seal()
    view[D] = b"4"
    second = view.seal()

    with pytest.raises(ValueError):
        view.settle(second)
    with pytest.raises(ValueError):
        view.settle({C: b"3"})  # equal, but not the sealed batch itself
    view.settle(first)
    view.settle(second)
    with pytest.raises(ValueError):
        view.settle(second)


# --- property: an overlay folded into its store is a dict -------------------------------

_KEYS = st.one_of(
    st.sampled_from([A, B, C, D, b'["e"]', b""]),
    st.binary(max_size=6),  # shorter than the offset key, so never equal to it
)
_VALUES = st.binary(max_size=12)
_OP = st.one_of(
    st.tuples(st.just("set"), _KEYS, _VALUES),
    st.tuples(st.just("del"), _KEYS, st.none()),
)
_BATCHES = st.lists(st.lists(_OP, max_size=25), min_size=1, max_size=5)


def _do(view: Overlay, model: dict[bytes, bytes], op: str, key: bytes, value: bytes | None) -> None:
    """One write to both the overlay and the dict; deleting a missing key is a KeyError."""
    if op == "set":
        assert value is not None
        view[key] = value
        model[key] = value
    elif key in model:
        del view[key]
        del model[key]
    else:
        with pytest.raises(KeyError):
            del view[key]


def _check_fold(
    make_store: Callable[[], TableStore],
    initial: dict[bytes, bytes],
    batches: list[list[tuple[str, bytes, bytes | None]]],
) -> None:
    store = make_store()
    try:
        store.apply(initial, 0)
        model = dict(initial)
        view = Overlay(store)
        for number, batch in enumerate(batches, start=1):
            for op, key, value in batch:
                _do(view, model, op, key, value)
                # The overlay reads like the dict at every step.
                assert view.get(key) == model.get(key)
                assert (key in view) == (key in model)
            assert dict(view.items()) == model
            assert len(view) == len(model)

            store.apply(view.take(), number)

            assert view.pending == {}
            assert contents(store) == model
            assert store.offset == number
            for _, key, _ in batch:
                assert store.get(key) == model.get(key)
    finally:
        store.close()


@settings(max_examples=150, deadline=None)
@given(initial=st.dictionaries(_KEYS, _VALUES, max_size=8), batches=_BATCHES)
def test_applying_take_to_a_memory_store_matches_a_dict(
    initial: dict[bytes, bytes], batches: list[list[tuple[str, bytes, bytes | None]]]
) -> None:
    _check_fold(MemoryStore, initial, batches)


@settings(max_examples=100, deadline=None)
@given(initial=st.dictionaries(_KEYS, _VALUES, max_size=8), batches=_BATCHES)
def test_applying_take_to_a_rocks_store_matches_a_dict(
    initial: dict[bytes, bytes], batches: list[list[tuple[str, bytes, bytes | None]]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="rocks-prop-") as tmp:
        path = Path(tmp) / "store"
        _check_fold(lambda: RocksStore(path), initial, batches)

        # And what was folded in survives a reopen.
        model = dict(initial)
        for batch in batches:
            for op, key, value in batch:
                if op == "set":
                    assert value is not None
                    model[key] = value
                else:
                    model.pop(key, None)
        again = RocksStore(path)
        try:
            assert contents(again) == model
            assert again.offset == len(batches)
        finally:
            again.close()


@settings(max_examples=150, deadline=None)
@given(
    initial=st.dictionaries(_KEYS, _VALUES, max_size=8),
    batches=_BATCHES,
    lag=st.lists(st.integers(min_value=0, max_value=2), min_size=5, max_size=5),
)
def test_pipelined_batches_read_like_a_dict(
    initial: dict[bytes, bytes],
    batches: list[list[tuple[str, bytes, bytes | None]]],
    lag: list[int],
) -> None:
    """Batches sealed and made durable later, in order, some while the next ones fold: at
    every step the overlay reads like the dict, and at the end the store is the dict."""
    store = MemoryStore()
    store.apply(initial, 0)
    model = dict(initial)
    view = Overlay(store)
    in_flight: list[dict[bytes, bytes | None]] = []

    def settle_one() -> None:
        writes = in_flight.pop(0)
        store.apply(writes, None)
        view.settle(writes)

    for number, batch in enumerate(batches):
        for op, key, value in batch:
            _do(view, model, op, key, value)
            assert view.get(key) == model.get(key)
        in_flight.append(view.seal())
        while len(in_flight) > lag[number]:
            settle_one()
        assert dict(view.items()) == model
    while in_flight:
        settle_one()
    assert view.sealed == [] and contents(store) == model


# --- prefix seeks (a room purge) -------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    stored=st.dictionaries(
        st.sampled_from(["!a", "!ab", "!b", "!a,", '!a"']), st.integers(0, 3), max_size=5
    ),
    sealed=st.dictionaries(st.sampled_from(["!a", "!ab", "!b"]), st.none() | st.integers(0, 3)),
    pending=st.dictionaries(st.sampled_from(["!a", "!ab", "!b"]), st.none() | st.integers(0, 3)),
)
def test_prefix_keys_are_the_keys_with_the_prefix(
    stored: dict[str, int], sealed: dict[str, int | None], pending: dict[str, int | None]
) -> None:
    """A room's keys by one seek, through the batches in flight: exactly the keys a full
    scan finds, for rooms whose IDs prefix one another."""

    def key(room: str, n: int) -> bytes:
        return orjson.dumps([room, "@u:hs", n])

    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("memory", "rocks"):
            store = open_store(backend, Path(tmp) / backend)
            store.apply({key(r, n): b"1" for r, n in stored.items()}, 1)
            view = Overlay(store)
            for layer, value in ((sealed, b"2"), (pending, b"3")):
                for r, n in layer.items():
                    if n is None:
                        if key(r, 1) in view:
                            del view[key(r, 1)]
                    else:
                        view[key(r, n)] = value
                if layer is sealed:
                    view.seal()
            keys = list(view.keys())  # values unread: a user erasure's pass
            assert len(keys) == len(set(keys)) and set(keys) == {k for k, _ in view.items()}
            for room in ("!a", "!ab", "!b", "!a,"):
                prefix = orjson.dumps([room])[:-1] + b","
                seek = list(view.prefix_keys(prefix))
                assert len(seek) == len(set(seek))
                assert set(seek) == {k for k in view if orjson.loads(k)[0] == room}
            store.close()


def test_a_reopened_database_takes_the_options_given(tmp_path: Path) -> None:
    """rocksdict alone reopens a database with its stored options (and a default block
    cache): `open_rdict` applies the ones given, the shared memory bound among them."""
    import re

    from rocksdict import Options

    from receipt_streams.adapters.engine.stores import MiB, RocksMemory, open_rdict

    def options(write_buffer: int) -> Options:
        return RocksMemory(8 * MiB, write_buffer).options()

    db = open_rdict(tmp_path / "db", options(1 * MiB))
    db[b"k"] = b"v"
    db.close()
    db = open_rdict(tmp_path / "db", options(2 * MiB))
    assert db[b"k"] == b"v"
    db.close()
    newest = max((tmp_path / "db").glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    text = newest.read_text()
    assert re.search(r"\n\s*write_buffer_size=2097152\n", text)
    assert "index_type=kTwoLevelIndexSearch" in text
