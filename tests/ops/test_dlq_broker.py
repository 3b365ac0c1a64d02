"""`ctl dlq` on the real broker: a receipt refused as not_joined after its grace period is
re-driven once its sender's join has arrived, and folds; a second re-drive sends nothing.
`ctl inspect` then shows it as the table, the admin view and /sync do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from receipt_streams.ops.dlq import DLQ_REASON, REDRIVEN_FROM
from tests.ops.support import Ctl, get_json, table, wait_until
from tests.support.scenario import Room
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, C = "@a:hs1", "@c:hs1"


def test_redrive_after_the_cause_is_fixed_folds_once_and_inspect_agrees(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ctl = Ctl(monkeypatch, capsys)
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-c": C, "tok-a": A}))
    admin_tokens = tmp_path / "admin-tokens.json"
    admin_tokens.write_bytes(orjson.dumps(["admin-tok"]))
    s = worker_settings(
        kafka_bootstrap, tmp_path, tokens_file=tokens, admin_tokens_file=admin_tokens
    )
    room = Room(s, "!dlq:hs1")
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        asyncio.run(
            produce(
                kafka_bootstrap,
                [
                    room.member(A),
                    room.event("$e1"),
                    room.event("$e2"),
                    room.receipt(A, "m.read", "$e1", 10),
                    room.receipt(C, "m.read", "$e2", 11),  # C has not joined (yet)
                ],
            )
        )
        listed = wait_until(
            lambda: ctl(s, "dlq", "list", "--reason", "not_joined")[1]["records"],
            "the not_joined refusal (after the 3 s grace period)",
        )
        assert len(listed) == 1 and C in (listed[0]["key"] or "") + str(listed[0])
        dlq_id = listed[0]["id"]
        code, counted = ctl(s, "dlq", "count")
        assert counted["by_reason"] == {"not_joined": 1} and sum(counted["by_hour"].values()) == 1
        code, shown = ctl(s, "dlq", "show", dlq_id)
        assert shown["value_decoded"]["user_id"] == C and shown["redriven"] is None
        assert shown["truncation"] is None

        asyncio.run(produce(kafka_bootstrap, [room.member(C)]))  # the cause is fixed
        code, dry = ctl(s, "dlq", "redrive", "--reason", "not_joined", "--dry-run")
        assert code == 0 and dry["sent"] == [] and [d["send"] for d in dry["decisions"]] == [True]
        assert (room.room_id, C, "m.read", None) not in table(s)

        code, done = ctl(s, "dlq", "redrive", dlq_id)
        assert code == 0 and [x["id"] for x in done["sent"]] == [dlq_id]
        folded = wait_until(lambda: table(s).get((room.room_id, C, "m.read", None)), "refold")
        assert folded["event_id"] == "$e2"

        code, again = ctl(s, "dlq", "redrive", "--reason", "not_joined")
        assert code == 0 and again["sent"] == []
        assert again["decisions"] == [
            {"id": dlq_id, "reason": "not_joined", "send": False, "why": "already re-driven"}
        ]
        code, shown = ctl(s, "dlq", "show", dlq_id)
        assert shown["redriven"]["to"].startswith(s.topic_client + ":")

        async def client_records():
            async with TopicReader(kafka_bootstrap, s.topic_client) as r:
                await r.wait_for(lambda recs: len(recs) >= 3, what="client records")
                await r.poll(500)
                return r.records

        resent = [r for r in asyncio.run(client_records()) if r.headers]
        assert len(resent) == 1  # one re-drive, not two
        headers = dict(resent[0].headers)
        assert headers[REDRIVEN_FROM] == f"{s.topic_dlq}:{dlq_id}".encode()
        assert headers[DLQ_REASON] == b"not_joined"

        code, inspected = ctl(s, "inspect", "--room", room.room_id)
        expected = {(k[1], k[2], k[3]): v for k, v in table(s).items() if k[0] == room.room_id}
        assert {
            (r["user_id"], r["receipt_type"], r["thread_id"]): {
                "event_id": r["event_id"],
                "stream_pos": r["stream_pos"],
                "ts": r["ts"],
                "data": r["data"],
            }
            for r in inspected["receipts"]
        } == expected
        base = f"http://127.0.0.1:{s.admin_port}"  # the room view is on the admin listener
        admin = wait_until(
            lambda: (
                v
                if len(
                    (
                        v := get_json(
                            f"{base}/_receipts/v1/rooms/{room.room_id}/receipts?include_private=true",
                            "admin-tok",
                        )
                    )["receipts"]
                )
                == 2
                else None
            ),
            "the sync view",
        )
        assert [(r["user_id"], r["event_id"]) for r in admin["receipts"]] == [
            (r["user_id"], r["event_id"]) for r in inspected["receipts"]
        ]
        client = f"http://127.0.0.1:{s.web_port}"
        sync = get_json(f"{client}/_matrix/client/v3/sync?timeout=0", token="tok-c")
        events = sync["rooms"]["join"][room.room_id]["ephemeral"]["events"]
        from_sync = {
            (user, rtype, eid)
            for ev in events
            for eid, by_type in ev["content"].items()
            for rtype, users in by_type.items()
            for user in users
        }
        assert from_sync == {
            (r["user_id"], r["receipt_type"], r["event_id"]) for r in inspected["receipts"]
        }
        code, by_event = ctl(s, "inspect", "--event", "$e2")
        assert [r["user_id"] for r in by_event["receipts"]] == [C]
        code, text = ctl(s, "inspect", "--user", C, as_json=False)
        assert "$e2" in text and "1 receipt(s)" in text
    finally:
        w.stop()
