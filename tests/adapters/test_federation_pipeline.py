"""Federation on the real broker: inbound EDUs are checked entry by entry and folded; local
m.read changes go out as EDUs to every other server in the room, and nothing private ever
reaches federation.edus.v1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.scenario import Room, pass_barrier, without_barriers
from tests.support.spec import validate_federation_receipt_edu
from tests.support.worker import (
    TopicReader,
    WorkerProcess,
    free_port,
    produce,
    worker_settings,
)

pytestmark = pytest.mark.broker

LOCAL_A, LOCAL_B = "@a:hs1", "@b:hs1"


@pytest.fixture(params=["relays-inline", "relays-apart"])
def worker(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    """The relays run in the worker, or in a `receipt-streams relays` process of their own
    beside a worker started with RECEIPT_STREAMS_RUN_RELAYS=false: the same EDUs either way."""
    apart = request.param == "relays-apart"
    s = worker_settings(kafka_bootstrap, tmp_path, edu_window_ms=100, run_relays=not apart)
    w = WorkerProcess(s, tmp_path / "worker.log")
    relays = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port()}),
        tmp_path / "relays.log",
        "relays",
    )
    try:
        w.start()
        if apart:
            relays.start().wait_ready()
        w.wait_ready()
        yield w
    finally:
        relays.stop()
        w.stop()


def edu(origin: str, content: dict[str, Any]) -> tuple[str, bytes, dict]:
    return (
        "",
        origin.encode(),
        {"origin": origin, "received_ts": 1, "edu": {"edu_type": "m.receipt", "content": content}},
    )


def entry(event_id: str, **data: Any) -> dict[str, Any]:
    return {"event_ids": [event_id], "data": {"ts": 1_700_000_000_000, **data}}


async def test_inbound_entries_are_checked_one_by_one(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room, other = Room(s, "!fed:hs1"), Room(s, "!nohs2:hs1")
    await produce(
        kafka_bootstrap,
        [room.member(LOCAL_A), room.member("@r:hs2"), room.event("$e1"), other.member(LOCAL_A)],
    )
    await pass_barrier(kafka_bootstrap, room, s.topic_dlq)
    inbound = [
        edu(
            "hs2",
            {
                room.room_id: {
                    "m.read": {
                        # good; its size leaves room for a DLQ record per rejected entry
                        # within twice the EDU's bytes (a tiny EDU's share one record)
                        "@r:hs2": entry("$e1", extra="kept" * 500),
                        "@forged:hs3": entry("$e1"),  # user of another server
                        "@two:hs2": {"event_ids": ["$e1", "$e2"], "data": {"ts": 1}},
                        "@t:hs2": entry("$unknown", thread_id=7),  # unknown event, odd thread
                    },
                    "m.read.private": {"@r:hs2": entry("$e1")},  # never federated
                },
                other.room_id: {"m.read": {"@r:hs2": entry("$x")}},  # hs2 is not in that room
            },
        ),
        ("", b"hs2", b"{broken"),  # a malformed EDU does not stop the stream
        edu("hs2", {room.room_id: {"m.read": {"@late:hs2": entry("$e1")}}}),
    ]
    await produce(kafka_bootstrap, [(s.topic_federation, k, v) for _, k, v in inbound])

    async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:

        def users(records: list) -> dict[str, Any]:
            out = {}
            for m in records:
                for event_id, by_type in orjson.loads(m.value)["receipt"]["content"].items():
                    for user, data in by_type.get("m.read", {}).items():
                        out[user] = (event_id, data)
            return out

        await sync.wait_for(
            lambda r: {"@r:hs2", "@t:hs2", "@late:hs2"} <= set(users(r)),
            what="the three good entries",
        )
        seen = users(sync.records)
    assert seen["@r:hs2"] == ("$e1", {"ts": 1_700_000_000_000, "extra": "kept" * 500})
    assert seen["@t:hs2"] == ("$unknown", {"ts": 1_700_000_000_000})  # unthreaded
    assert set(seen) == {"@r:hs2", "@t:hs2", "@late:hs2"}

    async with TopicReader(kafka_bootstrap, s.topic_dlq) as dlq:
        await dlq.wait_for(lambda r: len(r) >= 6, what="5 rejections after the barrier")
        codes = sorted(v["error"]["code"] for v in without_barriers(dlq.values()))
    assert codes == [
        "bad_receipt_type",
        "bad_shape",
        "not_json",
        "origin_mismatch",
        "origin_not_in_room",
    ]


async def test_local_receipts_go_to_every_other_server_and_nothing_private(
    worker: WorkerProcess, kafka_bootstrap: str
) -> None:
    s = worker.settings
    room = Room(s, "!out:hs1")
    members = [LOCAL_A, LOCAL_B, "@x:hs2", "@y:hs2", "@z:hs3", "@w:hs4"]
    setup = [room.member(u) for u in members]
    setup += [room.event(f"$e{i}") for i in range(1, 40)]
    setup += [room.event("$root"), room.event("$t1", relates_to=("m.thread", "$root"))]
    await produce(kafka_bootstrap, setup)
    await pass_barrier(kafka_bootstrap, room, s.topic_dlq)

    async with TopicReader(kafka_bootstrap, s.topic_edus) as edus:

        async def edus_for(user: str, event_id: str, expected: set[str]) -> None:
            def arrived(records: list) -> bool:
                got = {
                    m.key.decode()
                    for m in records
                    if _entry(orjson.loads(m.value), room.room_id, user, event_id)
                }
                return got >= expected

            await edus.wait_for(arrived, what=f"EDUs for {user} at {event_id}")

        await produce(kafka_bootstrap, [room.receipt(LOCAL_A, "m.read", "$e1", 1)])
        await edus_for(LOCAL_A, "$e1", {"hs2", "hs3", "hs4"})

        # Private receipts and read markers are never federated; the next public receipt
        # (same room, same partition, folded after them) shows they produced nothing.
        await produce(
            kafka_bootstrap,
            [
                room.receipt(LOCAL_A, "m.read.private", "$e5", 2),
                room.receipt(LOCAL_A, "m.fully_read", "$e5", 3),
                room.receipt(LOCAL_B, "m.read", "$e2", 4),
            ],
        )
        await edus_for(LOCAL_B, "$e2", {"hs2", "hs3", "hs4"})

        # Threaded and unthreaded receipts of one user: separate EDUs.
        await produce(
            kafka_bootstrap,
            [
                room.receipt(LOCAL_A, "m.read", "$t1", 5, "$root"),
                room.receipt(LOCAL_A, "m.read", "$e3", 6),
            ],
        )
        await edus_for(LOCAL_A, "$t1", {"hs2", "hs3", "hs4"})
        await edus_for(LOCAL_A, "$e3", {"hs2", "hs3", "hs4"})

        # hs4's last member leaves: it gets nothing more.
        await produce(kafka_bootstrap, [room.member("@w:hs4", "leave")])
        await pass_barrier(kafka_bootstrap, room, s.topic_dlq)
        await produce(kafka_bootstrap, [room.receipt(LOCAL_B, "m.read", "$e4", 7)])
        await edus_for(LOCAL_B, "$e4", {"hs2", "hs3"})

        # A burst of one user's receipts coalesces per destination.
        before = len(edus.records)
        burst = [room.receipt(LOCAL_A, "m.read", f"$e{i}", 100 + i) for i in range(10, 40)]
        await produce(kafka_bootstrap, burst)
        await edus_for(LOCAL_A, "$e39", {"hs2", "hs3"})
        burst_edus = [orjson.loads(m.value) for m in edus.records[before:]]

        all_edus = [(m.key.decode(), orjson.loads(m.value)) for m in edus.records]

    for key, value in all_edus:
        assert key == value["destination"] and value["origin"] == "hs1"
        assert key in {"hs2", "hs3", "hs4"}, "never to the local server"
        validate_federation_receipt_edu(
            {"edu_type": value["edu_type"], "content": value["content"]}
        )
        raw = orjson.dumps(value).decode()
        assert "m.read.private" not in raw and "m.fully_read" not in raw and "$e5" not in raw
    assert not any(_entry(v, room.room_id, LOCAL_B, "$e4") for k, v in all_edus if k == "hs4")
    threaded = [v for _, v in all_edus if _entry(v, room.room_id, LOCAL_A, "$t1")]
    assert all(
        _entry(v, room.room_id, LOCAL_A, "$t1")["data"]["thread_id"] == "$root" for v in threaded
    )
    per_destination = {d: [v for v in burst_edus if v["destination"] == d] for d in ("hs2", "hs3")}
    for destination, sent in per_destination.items():
        assert 1 <= len(sent) < len(burst), f"{destination}: burst not coalesced"
        assert _entry(sent[-1], room.room_id, LOCAL_A, "$e39"), "the latest wins"


def _entry(edu_value: dict, room_id: str, user: str, event_id: str) -> dict | None:
    got = edu_value["content"].get(room_id, {}).get("m.read", {}).get(user)
    return got if got and got["event_ids"] == [event_id] else None
