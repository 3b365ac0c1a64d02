"""The feeds on the real broker, from a worker process of each engine: the history holds every
accepted change once (nothing for a duplicate, nothing private), with the previous event and
the time to read; read positions are merged, local, forward only, written only on a move; both
go to the room's partition, and are read as every consumer must: read_committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receipt_streams.adapters.sending import partition_of
from tests.support.scenario import SENTINEL, Room, pass_barrier
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, B, C = "@a:hs1", "@b:hs1", "@c:hs2"  # the worker's server is hs1


@pytest.fixture(params=["batch", "faust"])
def worker(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    s = worker_settings(
        kafka_bootstrap, tmp_path, engine=request.param, serve_api=False, run_relays=False
    )
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        yield w
    finally:
        w.stop()


def edu(room: str, user: str, event_id: str, ts: int) -> dict[str, Any]:
    origin = user.split(":", 1)[1]
    return {
        "origin": origin,
        "received_ts": ts,
        "edu": {
            "edu_type": "m.receipt",
            "content": {room: {"m.read": {user: {"event_ids": [event_id], "data": {"ts": ts}}}}},
        },
    }


async def test_history_and_read_positions_follow_the_inputs(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!feeds:hs1")
    setup = [room.member(u) for u in (A, B, C, SENTINEL)]
    events = [room.event(f"$e{n}") for n in range(1, 7)]
    sent = {v["event_id"]: (v["stream_pos"], v["origin_server_ts"]) for _, _, v in events}
    await produce(kafka_bootstrap, setup + events)
    await pass_barrier(kafka_bootstrap, room, s.topic_dlq)  # the joins are folded
    t = 1_700_000_100_000

    async with (
        TopicReader(kafka_bootstrap, s.topic_history) as history,
        TopicReader(kafka_bootstrap, s.topic_read_positions) as positions,
    ):
        # A remote m.read, then the same EDU again: one change.
        remote = edu(room.room_id, C, "$e4", t)
        await produce(kafka_bootstrap, [(s.topic_federation, b"hs2", remote)])
        await history.wait_for(lambda r: len(r) >= 1, what="the remote receipt")
        await produce(kafka_bootstrap, [(s.topic_federation, b"hs2", remote)])

        duplicate = room.receipt(A, "m.read", "$e5", t + 5)
        client = [
            room.receipt(A, "m.read", "$e2", t + 1),  # history; position $e2
            room.receipt(A, "m.read", "$e2", t + 2),  # the same event: nothing
            room.receipt(A, "m.read.private", "$e4", t + 3),  # position $e4; not in history
            room.receipt(A, "m.read", "$e3", t + 4),  # history; behind the private one
            duplicate,  # history; position $e5
            duplicate,  # the same record again: nothing
            room.receipt(A, "m.fully_read", "$e6", t + 6),  # in neither
            room.receipt(A, "m.read", "$e1", t + 7),  # older: nothing
            room.receipt(B, "m.read", "$e3", t + 8, "main"),  # history; position (B, main)
        ]
        sentinel, sentinel_event = room.sentinel()
        await produce(kafka_bootstrap, client + sentinel)

        def has_sentinel(records: list[Any]) -> bool:
            return any(sentinel_event.encode() in (m.value or b"") for m in records)

        await history.wait_for(has_sentinel, what="the sentinel's change")
        await positions.wait_for(has_sentinel, what="the sentinel's position")
        await history.poll(500)  # anything written after it (there must be nothing)
        await positions.poll(500)

        room_partition = partition_of(room.key(), s.partitions)
        for reader in (history, positions):
            assert {m.partition for m in reader.records} == {room_partition}
        changes = [v for v in history.values() if v["user_id"] != SENTINEL]
        moves = [v for v in positions.values() if v["user_id"] != SENTINEL]

    def change(user: str, event_id: str, ts: int, prev: tuple[str, int] | None) -> dict:
        pos, origin_ts = sent[event_id]
        return {
            "room_id": room.room_id,
            "user_id": user,
            "receipt_type": "m.read",
            "thread_id": "main" if user == B else None,
            "event_id": event_id,
            "stream_pos": pos,
            "ts": ts,
            "previous_event_id": prev[0] if prev else None,
            "previous_stream_pos": sent[prev[0]][0] if prev else None,
            "previous_ts": prev[1] if prev else None,
            "origin_server_ts": origin_ts,
            "time_to_read_ms": ts - origin_ts,
            "source": "federation" if user == C else "client",
        }

    assert changes == [
        change(C, "$e4", t, None),
        change(A, "$e2", t + 1, None),
        change(A, "$e3", t + 4, ("$e2", t + 1)),
        change(A, "$e5", t + 5, ("$e3", t + 4)),
        change(B, "$e3", t + 8, None),
    ]

    def move(user: str, thread: str | None, event_id: str, ts: int) -> dict:
        return {
            "room_id": room.room_id,
            "user_id": user,
            "thread_id": thread,
            "event_id": event_id,
            "stream_pos": sent[event_id][0],
            "ts": ts,
        }

    assert moves == [
        move(A, None, "$e2", t + 1),
        move(A, None, "$e4", t + 3),  # the private receipt is further
        move(A, None, "$e5", t + 5),
        move(B, "main", "$e3", t + 8),
    ]
