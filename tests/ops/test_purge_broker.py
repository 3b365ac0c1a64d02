"""A room purge and a user erasure on the real broker, through `ctl purge-room` and
`ctl erase-user` and a real worker (both fold engines): afterwards the table (the receipts
changelog's last values), the room-state changelog, `/sync`, the sync deltas and the next
export no longer hold them, and other rooms and users are untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from receipt_streams.adapters.sending import partition_of
from receipt_streams.entrypoints.cli import main
from receipt_streams.ops.kafka import read_table
from tests.ops.support import Ctl, get_json, table, wait_until
from tests.support.scenario import Room
from tests.support.worker import (
    TopicReader,
    WorkerProcess,
    produce,
    settings_env,
    worker_settings,
)

pytestmark = pytest.mark.broker

A, B, E, V = "@a:hs1", "@b:hs1", "@e:hs1", "@v:hs1"  # E is erased; V only views


def rooms_on_both_partitions() -> tuple[str, str, str]:
    """The purged room, and two rooms the erasure must reach on partitions 0 and 1."""
    by_partition: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in by_partition.values()) < 2:
        room = f"!purge{i}:hs1"
        by_partition[partition_of(room.encode(), 2)].append(room)
        i += 1
    return by_partition[0][0], by_partition[0][1], by_partition[1][0]


def sync_view(s: Any, token: str) -> dict[str, set[tuple[str, str, str]]]:
    """Room -> (user, type, event) of a full /sync, account data included."""
    body = get_json(f"http://127.0.0.1:{s.web_port}/_matrix/client/v3/sync?timeout=0", token)
    out: dict[str, set[tuple[str, str, str]]] = {}
    for room_id, room in body.get("rooms", {}).get("join", {}).items():
        seen = out.setdefault(room_id, set())
        for ev in room.get("ephemeral", {}).get("events", []):
            for eid, by_type in ev["content"].items():
                for rtype, users in by_type.items():
                    seen.update((u, rtype, eid) for u in users)
        for ev in room.get("account_data", {}).get("events", []):
            seen.add((token, ev["type"], ev["content"]["event_id"]))
    return out


@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_purge_and_erasure_reach_every_output(
    engine: str,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ctl = Ctl(monkeypatch, capsys)
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-a": A, "tok-b": B, "tok-e": E, "tok-v": V}))
    s = worker_settings(kafka_bootstrap, tmp_path, tokens_file=tokens, engine=engine)
    purged, kept0, kept1 = rooms_on_both_partitions()
    rooms = {r: Room(s, r) for r in (purged, kept0, kept1)}
    records = []
    for room in rooms.values():
        records += [room.member(u) for u in (A, B, E, V)]
        records += [room.event("$1" + room.room_id[1:7]), room.event("$2" + room.room_id[1:7])]
        one, two = "$1" + room.room_id[1:7], "$2" + room.room_id[1:7]
        records += [
            room.receipt(A, "m.read", two, 10),
            room.receipt(B, "m.read.private", one, 11),
            room.receipt(E, "m.read", one, 12),
            room.receipt(E, "m.read.private", two, 13),
            room.receipt(V, "m.fully_read", one, 14),
        ]
    everything = {
        (r, u, t, None)
        for r in rooms
        for u, t in ((A, "m.read"), (B, "m.read.private"), (E, "m.read"), (E, "m.read.private"))
    } | {(r, V, "m.fully_read", None) for r in rooms}
    expected = {k for k in everything if k[0] != purged and k[1] != E}

    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        asyncio.run(produce(kafka_bootstrap, records))
        wait_until(lambda: set(table(s)) == everything, "the seeded table", timeout=60)
        before = table(s)
        wait_until(lambda: set(sync_view(s, "tok-v")) == set(rooms), "the seeded /sync view")

        code, purge = ctl(s, "purge-room", purged, "--reason", "room deleted")
        assert code == 0 and [w["partition"] for w in purge["written"]] == [0]
        code, erase = ctl(s, "erase-user", E)
        assert code == 0 and sorted(w["partition"] for w in erase["written"]) == [0, 1]

        # The table: the changelog's last values, other rooms and users untouched.
        after = wait_until(lambda: t if set(t := table(s)) == expected else None, "removals")
        assert after == {k: v for k, v in before.items() if k in expected}

        # Each removed key's last changelog record is a tombstone (compaction drops them), on
        # the key's own partition (a restore of that partition must see it).
        async def changelog() -> list[Any]:
            async with TopicReader(kafka_bootstrap, s.changelog_receipts) as r:
                await r.wait_for(lambda recs: sum(m.value is None for m in recs) >= 8)
                await r.poll(500)
                return r.records

        records = asyncio.run(changelog())
        last = {tuple(orjson.loads(m.key)): m.value for m in records}
        for m in records:
            assert m.partition == partition_of(orjson.loads(m.key)[0].encode(), 2)
        assert {k for k, v in last.items() if v is None} == everything - expected
        # The room state of the purged room is gone too (memberships, servers, events).
        state = asyncio.run(read_table(s, s.changelog_state, quiet=True))
        assert not [k for k in state if purged in orjson.loads(k)]
        assert [k for k in state if kept0 in orjson.loads(k)]

        # /sync: the purged room is no longer joined, E's receipts are gone, the rest stays.
        def synced() -> Any:
            view = sync_view(s, "tok-v")
            return (
                view if purged not in view and not any(E in str(x) for x in view.values()) else None
            )

        view = wait_until(synced, "the /sync view after the removals")
        for room in (kept0, kept1):
            one, two = "$1" + room[1:7], "$2" + room[1:7]
            assert view[room] == {(A, "m.read", two), ("tok-v", "m.fully_read", one)}
        assert {r: x for r, x in sync_view(s, "tok-b").items()} == {
            room: {(A, "m.read", "$2" + room[1:7]), (B, "m.read.private", "$1" + room[1:7])}
            for room in (kept0, kept1)
        }

        # The sync deltas carry the removals; private ones only under their owner.
        async def deltas() -> list[dict[str, Any]]:
            async with TopicReader(kafka_bootstrap, s.topic_sync) as r:

                def removals(recs: list) -> int:
                    return sum(
                        len(d.get("removed", []))
                        + sum(map(len, d.get("removed_private", {}).values()))
                        for d in (orjson.loads(m.value) for m in recs)
                    )

                await r.wait_for(lambda recs: removals(recs) >= 8, what="removal deltas")
                return r.values()

        removed: set[tuple] = set()
        for d in asyncio.run(deltas()):
            for slot in d.get("removed", []):
                assert slot["receipt_type"] == "m.read"
                removed.add((d["room_id"], slot["user_id"], "m.read", slot["thread_id"]))
            for owner, slots in d.get("removed_private", {}).items():
                removed |= {(d["room_id"], owner, x["receipt_type"], x["thread_id"]) for x in slots}
        assert removed == everything - expected

        # The next export holds neither.
        for name, value in settings_env(s).items():
            if name.startswith("RECEIPT_STREAMS_"):
                monkeypatch.setenv(name, value)
        assert main(["export", "--out", str(tmp_path / "export"), "--quiet", "--json"]) == 0
        rows = duckdb.sql(
            f"SELECT room_id, user_id, receipt_type, thread_id "
            f"FROM '{tmp_path}/export/receipts.parquet'"
        ).fetchall()
        assert set(rows) == expected and len(rows) == len(expected)

        # Life goes on: E's next receipt is accepted, like anyone's.
        room = rooms[kept1]
        asyncio.run(produce(kafka_bootstrap, [room.receipt(E, "m.read", "$2" + kept1[1:7], 20)]))
        wait_until(lambda: (kept1, E, "m.read", None) in table(s), "a new receipt of E")
    finally:
        w.stop()
