"""`ctl` against a running two-worker fleet on the real broker (4 partitions, a 10 s
session): status lists both members with their assignments, per-partition lag and owner, and
each worker's readiness (a paused worker shows its lag and is not ready); inspect answers from
the table; dlq list/count/show see the refusals of both workers; reset plans with members
present, refuses without --force (and with it while they live), and with --force after the
workers died replays from a datetime to the same table once they are back; rebuild --into a
second app gives an empty diff; the refusals re-driven after their users joined fold, once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from receipt_streams.config import Settings
from receipt_streams.ops.groups import reset_inputs
from tests.ops.support import Ctl, table, wait_until
from tests.support.fleet import Fleet
from tests.support.scenario import Room
from tests.support.worker import WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

PARTITIONS = 4
USERS = ("@a:hs1", "@b:hs1", "@c:hs1")
EVENTS = 12
STRANGER = "@stranger:hs1"  # never joined: refused as not_joined


def rooms_by_partition(per_partition: int) -> dict[int, list[str]]:
    """Room IDs whose key hashes to each partition (as the producers' default partitioner
    places them), so both workers own rooms."""
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(v) < per_partition for v in out.values()):
        room = f"!fleet{i}:hs1"
        p = (murmur2(room.encode()) & 0x7FFFFFFF) % PARTITIONS
        if len(out[p]) < per_partition:
            out[p].append(room)
        i += 1
    return out


def fold(ctl: Ctl, s: Settings) -> dict[str, Any]:
    code, status = ctl(s, "status")
    assert code == 0, status
    return next(g for g in status["groups"] if g["group"] == s.app_id) | {"_status": status}


def settled(ctl: Ctl, s: Settings, urls: set[str]) -> dict[str, Any] | None:
    """The fold group once both workers are members with partitions, both ready, and no
    lag on the client topic; else None."""
    g = fold(ctl, s)
    workers = {w["url"]: w for w in g["_status"]["workers"]}
    ok = (
        g["state"] == "Stable"
        and {m["url"] for m in g["members"]} == urls
        and all(m["assignment"] for m in g["members"])
        and set(workers) == urls
        and all(w["ready"] for w in workers.values())
        and all(r["lag"] == 0 for r in g["partitions"] if r["topic"] == s.topic_client)
        and g["inputs_lag"] == 0
    )
    return g if ok else None


def test_ctl_against_a_two_worker_fleet(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ctl = Ctl(monkeypatch, capsys)
    s = worker_settings(kafka_bootstrap, tmp_path, partitions=PARTITIONS, session_timeout_s=10.0)
    fleet = Fleet(s, tmp_path)
    by_partition = rooms_by_partition(2)
    rooms = {r: Room(s, r) for ids in by_partition.values() for r in ids}
    try:
        w1, w2 = fleet.spawn(), fleet.spawn()
        asyncio.run(fleet.ready(w1, w2))
        urls = {f"http://127.0.0.1:{w.settings.web_port}" for w in (w1, w2)}

        # --- inputs: 8 rooms, 3 users, 12 events; 288 receipts; 8 + 1 refusals --------------
        setup = [room.member(u) for room in rooms.values() for u in USERS]
        setup += [room.event(f"$e{i}") for room in rooms.values() for i in range(1, EVENTS + 1)]
        asyncio.run(produce(kafka_bootstrap, setup))
        time.sleep(1.5)
        replay_from = int(time.time() * 1000)  # every receipt is after this instant
        receipts, expected = [], {}
        for n, (room_id, room) in enumerate(rooms.items()):
            for i in range(1, EVENTS + 1):
                for user in USERS:
                    receipts.append(room.receipt(user, "m.read", f"$e{i}", i))
            last = EVENTS - n % 3  # users read up to different events in different rooms
            receipts.append(room.receipt(USERS[0], "m.read.private", f"$e{last}", 99))
            expected[(room_id, USERS[0], "m.read.private", None)] = f"$e{last}"
            for user in USERS:
                expected[(room_id, user, "m.read", None)] = f"$e{EVENTS}"
            receipts.append(room.receipt(STRANGER, "m.read", "$e1", 1))  # not joined
        receipts.append((s.topic_client, b"!fleet0:hs1", b"not json"))
        asyncio.run(produce(kafka_bootstrap, receipts))

        def folded() -> bool:
            return {k: v["event_id"] for k, v in table(s).items()} == expected

        wait_until(folded, "the fleet to fold every receipt", timeout=90)

        # --- status: both members, their partitions, lag per partition, readiness ----------
        g = wait_until(lambda: settled(ctl, s, urls), "both workers settled", timeout=60)
        status = g["_status"]
        owned: dict[str, set[int]] = {}
        for m in g["members"]:
            owned[m["url"]] = {
                int(a.rsplit(":", 1)[1]) for a in m["assignment"] if a.startswith(s.topic_client)
            }
        assert sorted(p for ps in owned.values() for p in ps) == list(range(PARTITIONS))
        assert all(owned.values()), owned  # each worker owns client partitions
        client_rows = [r for r in g["partitions"] if r["topic"] == s.topic_client]
        assert [r["partition"] for r in client_rows] == list(range(PARTITIONS))
        members = {f"{m['client_id']}@{m['host']}": m["url"] for m in g["members"]}
        for r in client_rows:
            assert r["committed"] == r["end"] > 0 and r["lag"] == 0
            assert r["partition"] in owned[members[r["owner"]]]
        for relay in ("sync-deltas", "federation-edus"):
            rg = next(x for x in status["groups"] if x["group"] == f"{s.app_id}-{relay}")
            assert {m["url"] for m in rg["members"]} == urls  # relays run in both workers
        assert {w["url"]: sorted(w["groups"]) for w in status["workers"]} == {
            u: sorted([s.app_id, f"{s.app_id}-sync-deltas", f"{s.app_id}-federation-edus"])
            for u in urls
        }
        code, text = ctl(s, "status", as_json=False)
        assert code == 0 and text.count(": ready") == 2 and "2 member(s), lag" in text, text
        for url in urls:
            assert f"at {url}:" in text and f"worker {url} (" in text, text

        # A paused worker: its partitions show lag and their owner, and it is not ready.
        w2_url = f"http://127.0.0.1:{w2.settings.web_port}"
        w2_room = next(r for p in owned[w2_url] for r in by_partition[p])
        w2.pause()
        try:
            older = rooms[w2_room].receipt(USERS[1], "m.read", "$e1", 0)  # changes nothing
            asyncio.run(produce(kafka_bootstrap, [older]))
            g = fold(ctl, s)
        finally:
            w2.resume()
        lagging = [r for r in g["partitions"] if r["topic"] == s.topic_client and r["lag"]]
        assert [(r["lag"], members[r["owner"]]) for r in lagging] == [(1, w2_url)], lagging
        ready = {w["url"]: w["ready"] for w in g["_status"]["workers"]}
        assert ready == {w2_url: False, **{u: True for u in urls - {w2_url}}}
        g = wait_until(lambda: settled(ctl, s, urls), "the paused worker to catch up")

        # --- inspect answers from the table ---------------------------------------------------
        now = table(s)
        room_id = by_partition[0][0]
        code, found = ctl(s, "inspect", "--room", room_id)
        assert code == 0
        assert {(r["room_id"], r["user_id"], r["receipt_type"], r["thread_id"]): r["event_id"]
                for r in found["receipts"]} == {
            k: v["event_id"] for k, v in now.items() if k[0] == room_id
        }  # fmt: skip
        code, found = ctl(s, "inspect", "--user", USERS[0], "--event", f"$e{EVENTS - 1}")
        assert (
            {(r["room_id"], r["receipt_type"]) for r in found["receipts"]}
            == {
                (k[0], k[2])
                for k, v in now.items()
                if k[1] == USERS[0] and v["event_id"] == f"$e{EVENTS - 1}"
            }
            != set()
        )

        # --- dlq: the refusals of both workers ------------------------------------------------
        def dlq_total() -> int:
            _, counted = ctl(s, "dlq", "count")
            return counted["total"] if counted["total"] == len(rooms) + 1 else 0

        wait_until(dlq_total, "every refusal in the DLQ (after the grace period)", timeout=30)
        code, counted = ctl(s, "dlq", "count")
        assert counted["by_reason"] == {"not_joined": len(rooms), "not_json": 1}
        code, listed = ctl(s, "dlq", "list", "--reason", "not_joined", "--limit", "0")
        assert code == 0 and listed["total"] == len(rooms)
        sources = {int(r["source"].split(":")[1]) for r in listed["records"]}
        assert sources == set(range(PARTITIONS))  # refused by both workers
        code, shown = ctl(s, "dlq", "show", listed["records"][0]["id"])
        assert code == 0 and shown["value_decoded"]["user_id"] == STRANGER
        assert shown["redriven"] is None
        code, limited = ctl(s, "dlq", "list", "--limit", "3")
        assert limited["total"] == len(rooms) + 1 and len(limited["records"]) == 3

        # --- reset with members present -------------------------------------------------------
        before = table(s)

        def committed() -> dict[tuple[str, int], int | None]:
            """The fold's commits on the inputs a reset moves (the ticks go on moving)."""
            rows = fold(ctl, s)["partitions"]
            return {(r["topic"], r["partition"]): r["committed"] for r in rows
                    if r["topic"] in reset_inputs(s)}  # fmt: skip

        was = committed()
        code, plan = ctl(s, "reset", "--to-datetime", str(replay_from), "--dry-run")
        assert code == 0 and plan["applied"] is False
        moves = {(m["topic"], m["partition"]): m for m in plan["moves"]}
        assert len(moves) == len(reset_inputs(s)) * PARTITIONS
        for (topic, p), m in moves.items():
            assert m["current"] == was[(topic, p)]
            if topic == s.topic_client:
                assert m["new"] < m["current"]  # the receipts are replayed
            else:
                assert m["new"] == (m["current"] or 0)  # membership and events were before
        code, text = ctl(s, "reset", "--to-datetime", str(replay_from), "--dry-run", as_json=False)
        assert "lists 2 member(s)" in text and "stop them before applying" in text, text
        assert "dry run: nothing was moved" in text, text
        code, refused = ctl(s, "reset", "--to-datetime", str(replay_from))
        assert code == 2 and "2 active member(s)" in refused["error"], refused
        assert "stop the workers first" in refused["hint"]
        for m in fold(ctl, s)["members"]:
            assert f"{m['client_id']}@{m['host']}" in refused["error"]
        assert committed() == was  # nothing moved
        # --force with live members: the broker refuses commits from outside a live group;
        # ctl retries for twice the session timeout (2 s here, its own setting), then says so.
        quick = s.model_copy(update={"session_timeout_s": 2.0})
        code, refused = ctl(quick, "reset", "--to-datetime", str(replay_from), "--force")
        assert code == 2 and "refused the commit" in refused["error"], refused
        assert "stop every worker of this app" in refused["hint"]
        assert committed() == was

        # --force after the workers died: it waits for their sessions to expire, then moves.
        w1.kill()
        w2.kill()
        t0 = time.monotonic()
        code, applied = ctl(s, "reset", "--to-datetime", str(replay_from), "--force")
        assert code == 0 and applied["applied"] is True, applied
        assert time.monotonic() - t0 < 2 * s.session_timeout_s + 5
        assert applied["moves"] == plan["moves"]
        g = fold(ctl, s)
        assert g["members"] == [] and g["_status"]["workers"] == []
        lag = sum(r["lag"] for r in g["partitions"] if r["topic"] == s.topic_client)
        assert lag >= len(receipts) - 1  # the receipts are to be folded again

        # The workers come back (same data dirs), replay, and the table is as before.
        back = [WorkerProcess(w.settings, w.log_path).start() for w in (w1, w2)]
        fleet.procs += back
        asyncio.run(fleet.ready(*back))
        wait_until(lambda: settled(ctl, s, urls), "the replay folded", timeout=90)
        assert table(s) == before

        # --- rebuild a second version from the inputs, beside the fleet: the same table --------
        app2 = f"{s.app_id}-v2"
        code, built = ctl(
            s, "rebuild", "--into", app2, "--data-dir", str(tmp_path / "v2"), "--diff",
            "--timeout", "90",
        )  # fmt: skip
        assert code == 0 and built["diff"]["differences"] == [], built
        assert built["diff"]["right_keys"] == len(expected)

        # --- re-drive once the strangers joined: they fold, and a second re-drive sends none --
        refused = 2 * len(rooms)  # the replay refused them again
        wait_until(
            lambda: ctl(s, "dlq", "count")[1]["by_reason"].get("not_joined") == refused,
            "the replayed refusals",
        )
        asyncio.run(produce(kafka_bootstrap, [r.member(STRANGER) for r in rooms.values()]))
        code, dry = ctl(s, "dlq", "redrive", "--reason", "not_joined", "--dry-run")
        assert code == 0 and dry["sent"] == [] and len(dry["decisions"]) == refused
        assert all(d["send"] for d in dry["decisions"])
        code, done = ctl(s, "dlq", "redrive", "--reason", "not_joined")
        assert code == 0 and len(done["sent"]) == refused
        joined = {(r, STRANGER, "m.read", None): "$e1" for r in rooms}

        def refolded() -> bool:
            return {k: v["event_id"] for k, v in table(s).items()} == expected | joined

        wait_until(refolded, "the re-driven receipts folded")
        code, again = ctl(s, "dlq", "redrive", "--reason", "not_joined")
        assert code == 0 and again["sent"] == []
        assert {d["why"] for d in again["decisions"]} == {"already re-driven"}
    finally:
        fleet.stop_all()
