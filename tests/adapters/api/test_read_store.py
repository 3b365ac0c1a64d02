"""The on-disk view of the changelogs answers every query exactly as the in-memory index does,
however its feed is cut into batches; the sliding-sync property holds over it; it survives a
restart from its local copy, rebuilds when that copy is not for its changelogs, and keeps
RocksDB's memory within its bound."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receipt_streams.adapters.api.read_store import _BACKGROUND, DiskView
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.adapters.engine.stores import RocksMemory, StoreInUse, ensure_not_in_use
from receipt_streams.config import Settings
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from receipt_streams.core.sync_view import SyncIndex, Token
from tests.support.sliding import OPS, check_owed

USERS = ("@me:hs1", "@a:hs1", "@b:hs2")
ROOMS = ("!r1:hs1", "!r2:hs1", "!r3:hs2")
EVENTS = ("$e0", "$e1", "$e2", "$e3")
MEMORY = RocksMemory(8 * 2**20, 1 * 2**20)  # one for every test view: bounded in all

_receipt = st.tuples(
    st.just("r"),
    st.sampled_from(ROOMS),
    st.sampled_from(USERS),
    st.sampled_from(("m.read", "m.read.private", "m.fully_read")),
    st.sampled_from(EVENTS),
    st.sampled_from((None, "main", "$root")),
    st.booleans(),  # a tombstone (rare on the changelog, but it must be right)
)
_member = st.tuples(
    st.just("m"),
    st.sampled_from(ROOMS),
    st.sampled_from(USERS),
    st.sampled_from(("join", "join", "leave", "invite", None)),
)
_event = st.tuples(st.just("e"), st.sampled_from(ROOMS), st.sampled_from(EVENTS), st.integers(0, 9))
_commit = st.tuples(st.just("commit"))


class Both:
    """The same records fed to a SyncIndex and a DiskView, offsets numbered per partition."""

    def __init__(self, path: Path, recent: int = 3, answers: int = 100_000) -> None:
        self.memory = SyncIndex(2, 2, recent)
        self.disk = DiskView(path, 2, 2, recent, MEMORY, answers_receipts=answers)
        self.r_next, self.m_next = [0, 0], [0, 0]

    def feed(self, op: tuple) -> None:
        views: list[Any] = [self.memory, self.disk]
        if op[0] == "commit":
            for v in views:
                v.commit()
            return
        partition = ROOMS.index(op[1]) % 2
        if op[0] == "r":
            _, room, user, rtype, event, thread, tomb = op
            thread = None if rtype == "m.fully_read" else thread
            k = ReceiptKey(room, user, rtype, thread)
            v = None if tomb else Receipt(event, 1, 7, client_data(7, thread))
            for view in views:
                view.apply_receipt(partition, self.r_next[partition], k, v)
            self.r_next[partition] += 1
            return
        for view in views:
            if op[0] == "m":
                view.apply_membership(partition, self.m_next[partition], *op[1:])
            else:
                view.apply_event(partition, self.m_next[partition], *op[1:3], op[3])
        self.m_next[partition] += 1


def same_answers(memory: SyncIndex, disk: DiskView, tokens: list[Token]) -> None:
    assert disk.token() == memory.token()
    for room in ROOMS:
        assert disk.room_receipts(room) == memory.room_receipts(room)
        assert disk.latest_events(room, 2) == memory.latest_events(room, 2)
        for events in ((), EVENTS[:1], EVENTS[1:3], EVENTS):
            assert disk.receipts_on_events(room, events) == memory.receipts_on_events(room, events)
        for user in USERS:
            assert disk.user_receipts(room, user) == memory.user_receipts(room, user)
            assert disk.member_entry(room, user) == memory.member_entry(room, user)
        for token in tokens:
            assert disk.room_changes_since(room, token) == memory.room_changes_since(room, token)
    for token in tokens:
        assert disk.rooms_changed_since(ROOMS, token) == memory.rooms_changed_since(ROOMS, token)
    for user in USERS:
        assert disk.joined_rooms(user) == memory.joined_rooms(user)
        for rooms, newest in ((ROOMS, 2), (ROOMS[1:], 0), ((), 3), (ROOMS[:1] * 2, 3)):
            assert disk.user_rooms(user, rooms, newest) == memory.user_rooms(user, rooms, newest)
        for token in [None, *tokens]:
            assert disk.sync(user, token) == memory.sync(user, token)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(_receipt, _receipt, _member, _event, _commit), max_size=60),
    st.sampled_from((0, 4, 100_000)),
)
def test_disk_view_answers_as_the_memory_index(ops: list[tuple], answers: int) -> None:
    """Asked after every batch, so an answer kept from before a batch that wrote its room
    (with none kept, a few, or all) would show."""
    with tempfile.TemporaryDirectory() as tmp:
        both = Both(Path(tmp) / "view", answers=answers)
        tokens = []
        for op in [*ops, ("commit",)]:
            both.feed(op)
            if op[0] == "commit":
                tokens.append(both.memory.token())
                same_answers(both.memory, both.disk, tokens)
        assert both.disk.answers.held <= answers
        # A restart: the local copy is ready at once, at the same position, same answers.
        both.disk.close()
        reopened = DiskView(Path(tmp) / "view", 2, 2, 3, MEMORY)
        same_answers(both.memory, reopened, tokens)
        reopened.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(1, 4))
def test_sliding_sync_property_over_the_disk_view(ops: list[tuple], max_rooms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        view = DiskView(Path(tmp) / "view", 2, 1, 3, MEMORY)
        check_owed(ops, max_rooms, view)
        view.close()


def test_uncommitted_writes_are_neither_answered_nor_kept(tmp_path: Path) -> None:
    view = DiskView(tmp_path / "v", 2, 2, 3, MEMORY)
    k = ReceiptKey(ROOMS[0], USERS[0], "m.read", None)
    view.apply_receipt(0, 0, k, Receipt("$e0", 1, 1, {"ts": 1}))
    view.commit()
    view.apply_receipt(0, 1, k, Receipt("$e1", 2, 2, {"ts": 2}))  # a batch cut by a crash
    assert view.room_receipts(ROOMS[0]) == [(k, Receipt("$e0", 1, 1, {"ts": 1}))]
    assert view.token().receipts == (1, 0)
    view.close()
    again = DiskView(tmp_path / "v", 2, 2, 3, MEMORY)
    assert again.token().receipts == (1, 0)  # the feed reads offset 1 again
    assert again.receipts_on_events(ROOMS[0], ["$e0"]) == [(k, Receipt("$e0", 1, 1, {"ts": 1}))]
    again.close()


def test_a_copy_for_other_changelogs_or_too_old_is_rebuilt(tmp_path: Path) -> None:
    k = ReceiptKey(ROOMS[0], USERS[0], "m.read", None)
    view = DiskView(tmp_path / "v", 2, 2, 3, MEMORY, identity={"app_id": "one"})
    view.apply_receipt(0, 0, k, Receipt("$e0", 1, 1, {"ts": 1}))
    view.commit()
    view.close()
    same = DiskView(tmp_path / "v", 2, 2, 3, MEMORY, identity={"app_id": "one"})
    assert not same.empty
    same.close()
    for changed in (
        {"identity": {"app_id": "two"}},
        {"identity": {"app_id": "one"}, "max_age_s": -1.0},
    ):
        other = DiskView(tmp_path / "v", 2, 2, 3, MEMORY, **changed)  # type: ignore[arg-type]
        assert other.empty and other.room_receipts(ROOMS[0]) == []
        other.apply_receipt(0, 0, k, Receipt("$e0", 1, 1, {"ts": 1}))
        other.commit()
        other.close()
    layout = DiskView(tmp_path / "v", 4, 2, 3, MEMORY, identity={"app_id": "one"})
    assert layout.empty and layout.token().receipts == (0, 0, 0, 0)
    layout.wipe()
    assert layout.empty
    layout.close()


def within(memory: RocksMemory, bound: int) -> None:
    """RocksDB's memory is under `bound`, or back under it within 5 s; never over 1.5 x."""
    deadline = time.monotonic() + 5
    while (used := memory.usage()) > bound:
        assert used <= bound * 3 // 2, f"{used} bytes: far over the bound {bound}"
        assert time.monotonic() < deadline, f"{used} bytes: over the bound {bound} for 5 s"
        time.sleep(0.01)


def test_memory_stays_within_its_bound_whatever_the_key_count(tmp_path: Path) -> None:
    """RocksDB's memory (block cache and memtables) is charged to one bounded cache (a
    memtable may pass it briefly before its flush, as the tables' stores do); Python keeps
    nothing per key once a batch is written. The flush runs in RocksDB's background thread:
    on a busy machine a batch may be written before it has, so the bound is checked once the
    flush had its chance (a hard ceiling holds at every instant)."""
    memory = RocksMemory(4 * 2**20, 256 * 2**10)
    view = DiskView(tmp_path / "v", 1, 1, 3, memory)
    bound = memory.total_bytes * 5 // 4
    offset = 0
    tracemalloc.start()
    try:
        for batch in range(20):
            for n in range(2500):
                room = f"!room{n % 500}:hs1"
                k = ReceiptKey(room, f"@u{batch}-{n}:hs1", "m.read", None)
                view.apply_receipt(0, offset, k, Receipt(f"$e{n}", n, n, {"ts": n}))
                offset += 1
            view.commit()
            within(memory, bound)
            if batch == 1:
                start = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 1 << 20, f"{grown} bytes kept in Python for 45,000 more keys"
    assert len(view.room_receipts("!room7:hs1")) == 100
    for n in range(0, 500, 7):
        view.rooms_changed_since([f"!room{n}:hs1"], Token((0,), (0,)))
        within(memory, bound)
    view.close()


def test_a_view_held_elsewhere_is_refused_with_the_dir_and_what_to_do(tmp_path: Path) -> None:
    """RocksDB locks its directory: a second open, in this process or another, fails with
    `StoreInUse` naming the directory and RECEIPT_STREAMS_DATA_DIR, not a RocksDB error."""
    path = tmp_path / "data" / "read-view"
    view = DiskView(path, 2, 2, 3, MEMORY)
    try:
        with pytest.raises(StoreInUse) as same:
            DiskView(path, 2, 2, 3, MEMORY)
        assert str(path) in str(same.value) and "already open in this process" in str(same.value)
        assert "RECEIPT_STREAMS_DATA_DIR of its own" in str(same.value)

        probe = (
            "import sys\n"
            "from pathlib import Path\n"
            "from receipt_streams.adapters.api.read_store import DiskView\n"
            "from receipt_streams.adapters.engine.stores import StoreInUse, ensure_not_in_use\n"
            "path = Path(sys.argv[1])\n"
            "try:\n"
            "    ensure_not_in_use(path)\n"
            "except StoreInUse as exc:\n"
            "    print('probe:', exc)\n"
            "try:\n"
            "    DiskView(path, 2, 2, 3)\n"
            "except StoreInUse as exc:\n"
            "    print('open:', exc)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60
        )
        assert other.returncode == 0, other.stderr
        lines = other.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == ["probe", "open"], other.stdout
        for line in lines:
            assert f"{path} is in use by another process" in line
            assert "give each worker and API process a RECEIPT_STREAMS_DATA_DIR" in line
    finally:
        view.close()
    ensure_not_in_use(path)  # released with the view
    DiskView(path, 2, 2, 3, MEMORY).close()


def test_two_feeds_on_one_data_dir_in_one_process_collide_clearly(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, read_store="rocksdb", read_store_memory_bytes=2**22)
    first = SyncFeed(s)
    first.open()
    assert isinstance(first.index, DiskView) and first.index.path == tmp_path / "read-view"
    first.open()  # idempotent
    with pytest.raises(StoreInUse, match="already open in this process"):
        SyncFeed(s).open()
    memory = SyncFeed(s.model_copy(update={"read_store": "memory"}))
    memory.open()
    assert isinstance(memory.index, SyncIndex)
    first.index.close()


def test_a_closed_feed_has_released_its_view_and_closing_again_does_nothing(
    tmp_path: Path,
) -> None:
    """The commands close the view when they stop, so that RocksDB's background work ends
    before the process tears down; an iterator the queries still held must not keep it open."""
    s = Settings(data_dir=tmp_path, read_store="rocksdb", read_store_memory_bytes=2**22)
    feed = SyncFeed(s)
    feed.open()
    assert isinstance(feed.index, DiskView)
    feed.index.room_receipts(ROOMS[0])  # makes the shared iterator
    feed.close()
    feed.close()
    assert feed.index.closed
    again = SyncFeed(s)
    again.open()  # the directory's lock was released
    again.close()
    SyncFeed(s.model_copy(update={"read_store": "memory"})).close()  # nothing to close


def test_background_jobs_are_counted_from_rocksdb_properties_it_knows(tmp_path: Path) -> None:
    """An unknown property name reads as None (then 0): every one must be known."""
    view = DiskView(tmp_path / "v", 2, 2, 3, MEMORY)
    try:
        assert all(view.db.property_int_value(name) is not None for name in _BACKGROUND)
        assert view.background_jobs() >= 0
    finally:
        view.close()


def test_the_default_read_store_is_on_disk() -> None:
    assert Settings.model_fields["read_store"].default == "rocksdb"
