"""The benchmark workload: realistic shape, repeatable, and valid input for the fold."""

from __future__ import annotations

from collections import Counter

from receipt_streams.bench.workload import Workload, WorkloadSpec
from receipt_streams.core.models import ClientReceipt, MembershipChange, RoomEvent

SPEC = WorkloadSpec(receipts=20_000, rooms=300, users=3_000, seed=3)


def test_same_seed_same_records_and_another_seed_differs() -> None:
    a, b = Workload(SPEC, "hs0"), Workload(SPEC, "hs0")
    assert a.setup == b.setup and list(a.receipts()) == list(b.receipts())
    c = Workload(WorkloadSpec(receipts=20_000, rooms=300, users=3_000, seed=4), "hs0")
    assert list(c.receipts())[:100] != list(a.receipts())[:100]


def test_room_sizes_follow_a_zipf_like_law() -> None:
    sizes = sorted((len(r.members) for r in Workload(SPEC, "hs0").rooms), reverse=True)
    assert sizes[0] >= 1_000 and sizes[0] > 10 * sizes[len(sizes) // 2]
    assert sum(s <= 10 for s in sizes) > len(sizes) / 2, "most rooms have a handful"


def test_mix_threads_servers_and_forward_motion() -> None:
    work = Workload(SPEC, "hs0")
    receipts = list(work.receipts())
    mix = Counter(r["receipt_type"] for r in receipts)
    assert abs(mix["m.read"] / len(receipts) - 0.80) < 0.02
    assert abs(mix["m.read.private"] / len(receipts) - 0.15) < 0.02
    assert abs(mix["m.fully_read"] / len(receipts) - 0.05) < 0.01
    assert 0.06 < sum("thread_id" in r for r in receipts) / len(receipts) < 0.12
    assert all(r["user_id"].endswith(":hs0") for r in receipts), "client receipts are local"
    assert len({u.split(":")[1] for u in work.users}) == SPEC.servers
    rooms = {room.room_id: room for room in work.rooms}

    def progress(r: dict) -> float:
        """How far into its room's (main or thread) timeline a receipt points, 0..1."""
        room = rooms[r["room_id"]]
        events = room.thread_events if "thread_id" in r else room.main_events
        return events.index(r["event_id"]) / max(1, len(events) - 1)

    early = sum(map(progress, receipts[:1000])) / 1000
    late = sum(map(progress, receipts[-1000:])) / 1000
    assert late > early + 0.5, "readers move forward over time"


def test_every_record_is_valid_input() -> None:
    work = Workload(WorkloadSpec(receipts=2_000, rooms=30, seed=5), "hs0")
    models = {"membership": MembershipChange, "events": RoomEvent}
    for kind, value in work.setup:
        models[kind].model_validate(value)
    for value in work.receipts():
        r = ClientReceipt.model_validate(value)
        assert (r.room_id, r.event_id) in work.positions
    positions = [v["stream_pos"] for _, v in work.setup]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
