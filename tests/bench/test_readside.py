"""The readside scenario: its layout (exactly N distinct receipt keys, every receipt's user
joined, the same for the same seed), and a small run end to end against the broker."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from receipt_streams.bench.process import worker_settings
from receipt_streams.bench.readside import Layout, bench_readside
from receipt_streams.bench.scenarios import Bench


def _layout(tmp_path: Path, keys: int, seed: int = 1) -> tuple[Layout, list]:
    s = worker_settings("127.0.0.1:9", tmp_path, partitions=4)
    layout = Layout(s, keys, seed)
    return layout, list(layout.records())


def test_layout_makes_exactly_the_keys_with_their_joins(tmp_path: Path) -> None:
    layout, records = _layout(tmp_path, 5_000)
    receipts = [r for r in records if r[0] == layout.s.changelog_receipts]
    state = [orjson.loads(r[1]) for r in records if r[0] == layout.s.changelog_state]
    keys = [orjson.loads(r[1]) for r in receipts]
    assert len(keys) == len({tuple(k) for k in keys}) == layout.written_keys == 5_000
    joined = {(k[1], k[2]) for k in state if k[0] == "m"}
    events = {(k[1], k[2]) for k in state if k[0] == "e"}
    assert all((room, user) in joined for room, user, _, _ in keys)
    on = [(k[0], orjson.loads(r[2])["event_id"]) for k, r in zip(keys, receipts, strict=True)]
    assert set(on) <= events
    assert {t for _, _, t, _ in keys} == {"m.read", "m.read.private"}
    assert any(thread is not None for *_, thread in keys)
    # Rooms of falling sizes, the biggest 2,000 members; a record's partition is its room's.
    assert len(joined) == layout.memberships
    assert max(sum(1 for r, _ in joined if r == room) for room in {r for r, _ in joined}) == 2000
    by_room: dict[str, set[int]] = {}
    for topic, key, _, part in records:
        room = orjson.loads(key)[1 if topic == layout.s.changelog_state else 0]
        by_room.setdefault(room, set()).add(part)
    assert all(len(parts) == 1 for parts in by_room.values())
    # The users the load is spread over know their rooms.
    assert sum(1 for rooms in layout.rooms_of.values() if rooms) > 0


def test_updates_move_existing_keys_onto_new_events(tmp_path: Path) -> None:
    layout, records = _layout(tmp_path, 5_000)
    keys = {r[1] for r in records if r[0] == layout.s.changelog_receipts}
    updates = list(layout.updates(300))
    moved = [r for r in updates if r[0] == layout.s.changelog_receipts]
    assert len(moved) == 300 and all(r[1] in keys for r in moved)
    new_events = {orjson.loads(r[1])[2] for r in updates if r[0] == layout.s.changelog_state}
    assert {orjson.loads(r[2])["event_id"] for r in moved} == new_events


def test_layout_is_seeded(tmp_path: Path) -> None:
    def made(seed: int) -> list:
        layout, records = _layout(tmp_path, 3_000, seed)
        return [r[1:] for r in records + list(layout.updates(50))]  # topics named per run

    assert made(7) == made(7) != made(8)


@pytest.mark.parametrize("processes", [1, 2])
async def test_readside_end_to_end(kafka_bootstrap: str, tmp_path: Path, processes: int) -> None:
    """With two processes they share the client port, each from its own copy of the view."""
    b = Bench(kafka_bootstrap, seed=3, partitions=2, workdir=tmp_path)
    r = await bench_readside(b, keys=20_000, rate=40, duration=2, api_processes=processes)
    assert r["keys"] == 20_000 and r["api_processes"] == processes
    assert 2 <= r["settle_s"] < 120, r["settle_s"]  # the loads ran on a settled view
    assert r["changelog_receipts_records"] == 20_000 + r["tail_updates"]
    assert r["changelog_state_records"] == r["memberships"] + r["events"]
    for field in ("ready_no_local_state_s", "ready_local_state_s"):
        assert 0 < r[field] < 120, (field, r[field])
    for field in ("rss_ready_no_local_state_mb", "rss_ready_local_state_mb", "hwm_after_load_mb"):
        assert 20 < r[field] < 2000, (field, r[field])
    assert r["read_view_disk_mb"] > 0
    for name in ("sync", "sliding"):
        assert r[f"{name}_non_2xx"] == 0 and r[f"{name}_socket_errors"] == 0
        assert r[f"{name}_requests"] >= 40, r[f"{name}_requests"]
        assert 0 < r[f"{name}_p50_ms"] <= r[f"{name}_p99_ms"], r
        assert not math.isnan(r[f"{name}_p99_ms"])
        # What the load cost: the API's share of a core, within the machine's.
        assert 0 < r[f"{name}_cpu_api"] <= r[f"{name}_cpu_machine"] <= 2.05, r
        # The hypervisor's steal, part of the machine's busy time (0 on bare metal).
        assert 0 <= r[f"{name}_cpu_steal"] <= r[f"{name}_cpu_machine"], r
        # What it read from storage: counted (a process's own /proc/<pid>/io), never negative.
        assert r[f"{name}_disk_read_mb"] >= 0, r
        # The answers carry receipts: incremental /sync finds the tail, sliding sync the
        # receipts on the timelines.
        assert r[f"{name}_answers_with_receipts"] > 0.5, r
        assert r[f"{name}_answer_receipts_mean"] > 1, r
        # Every process answered a part of the load (with two: none answered it all).
        assert 1 / processes <= r[f"{name}_busiest_api_share"] <= 1, r
        if processes > 1:
            assert r[f"{name}_busiest_api_share"] < 1, r
