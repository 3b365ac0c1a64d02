"""`receipt-streams import-synapse`: Synapse rows map to the contract's input records (pure),
and an import from a Synapse-shaped SQLite database ends in the receipts table of a real worker.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from receipt_streams.entrypoints.cli import main
from receipt_streams.migrate.synapse_import import import_synapse
from receipt_streams.migrate.synapse_rows import ReceiptRow, map_receipts
from tests.support.synapse import EXPECTED, ROOM, TS, folded_by_a_worker
from tests.support.synapse import sqlite_db as synapse_db
from tests.support.worker import worker_settings

OTHER = "!o:hs1"


def row(
    stream_id: int,
    user: str,
    event_id: str = "$e1",
    receipt_type: str = "m.read",
    thread_id: str | None = None,
    room: str = ROOM,
    data: str | None = None,
) -> ReceiptRow:
    data = data if data is not None else orjson.dumps({"ts": TS + stream_id}).decode()
    return ReceiptRow(stream_id, room, receipt_type, user, event_id, thread_id, data, 10)


# --- the row mapping (pure) -------------------------------------------------------------


def test_local_receipts_become_client_records() -> None:
    mapped = map_receipts(
        [
            row(1, "@a:hs1"),
            row(2, "@a:hs1", "$e2", "m.read.private"),
            row(3, "@b:hs1", "$t1", thread_id="$root"),
            row(4, "@c:hs1", receipt_type="org.matrix.msc2285.read.private"),
        ],
        "hs1",
        received_ts=5,
    )
    assert not mapped.skipped
    assert [(r.kind, r.key) for r in mapped.records] == [("client", ROOM)] * 4
    assert [r.value for r in mapped.records] == [
        {"room_id": ROOM, "user_id": "@a:hs1", "receipt_type": "m.read", "event_id": "$e1",
         "ts": TS + 1},
        {"room_id": ROOM, "user_id": "@a:hs1", "receipt_type": "m.read.private",
         "event_id": "$e2", "ts": TS + 2},
        {"room_id": ROOM, "user_id": "@b:hs1", "receipt_type": "m.read", "event_id": "$t1",
         "ts": TS + 3, "thread_id": "$root"},
        {"room_id": ROOM, "user_id": "@c:hs1", "receipt_type": "m.read.private",
         "event_id": "$e1", "ts": TS + 4},
    ]  # fmt: skip


def test_remote_receipts_become_edus_by_origin_one_entry_per_user_and_room() -> None:
    extra = orjson.dumps({"ts": TS, "extra": "kept"}).decode()
    mapped = map_receipts(
        [
            row(1, "@r:hs2", data=extra),
            row(2, "@r:hs2", "$t1", thread_id="$root"),  # same user, another thread
            row(3, "@s:hs2", room=OTHER),
            row(4, "@x:hs3"),
        ],
        "hs1",
        received_ts=5,
    )
    by_origin: dict[str, list[dict]] = {}
    for r in mapped.records:
        assert r.kind == "federation" and r.key == r.value["origin"]
        assert r.value["received_ts"] == 5 and r.value["edu"]["edu_type"] == "m.receipt"
        by_origin.setdefault(r.key, []).append(r.value["edu"]["content"])
    assert by_origin["hs2"] == [
        {
            ROOM: {"m.read": {"@r:hs2": {"event_ids": ["$e1"], "data": {"ts": TS, "extra": "kept"}}}},  # noqa: E501
            OTHER: {"m.read": {"@s:hs2": {"event_ids": ["$e1"], "data": {"ts": TS + 3}}}},
        },
        {
            ROOM: {"m.read": {"@r:hs2": {"event_ids": ["$t1"],
                                         "data": {"ts": TS + 2, "thread_id": "$root"}}}},
        },
    ]  # fmt: skip
    assert by_origin["hs3"] == [
        {ROOM: {"m.read": {"@x:hs3": {"event_ids": ["$e1"], "data": {"ts": TS + 4}}}}}
    ]


def test_edus_are_bounded() -> None:
    rows = [row(i, f"@u{i}:hs2") for i in range(1, 251)]
    mapped = map_receipts(rows, "hs1", received_ts=5, edu_entries=100)
    sizes = [len(r.value["edu"]["content"][ROOM]["m.read"]) for r in mapped.records]
    assert sizes == [100, 100, 50]


def test_what_the_fold_would_refuse_is_skipped_and_counted() -> None:
    joined = {ROOM: {"@a:hs1", "@r:hs2"}}
    mapped = map_receipts(
        [
            row(1, "@a:hs1"),  # kept
            row(2, "@gone:hs1"),  # left the room
            row(3, "@r:hs2"),  # kept
            row(4, "@x:hs3"),  # nobody of hs3 is in the room
            row(5, "@r:hs2", receipt_type="m.read.private"),  # never federated
            row(6, "@a:hs1", receipt_type="m.fully_read"),  # not a receipt in Synapse's table
            row(7, "@a:hs1", data="{not json"),
            row(8, "@a:hs1", data='{"no_ts": 1}'),
        ],
        "hs1",
        received_ts=5,
        joined=joined,
    )
    assert [r.kind for r in mapped.records] == ["client", "federation"]
    assert mapped.skipped == {
        "not_joined": 1,
        "origin_not_in_room": 1,
        "receipt_type": 2,
        "bad_row": 2,
    }


# --- a Synapse-shaped database ------------------------------------------------------------


def test_dry_run_counts_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker: a dry run never connects (the bootstrap address below answers nothing)."""
    monkeypatch.setenv("RECEIPT_STREAMS_SERVER_NAME", "hs1")
    monkeypatch.setenv("RECEIPT_STREAMS_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    db = synapse_db(tmp_path / "homeserver.db")
    assert main(["import-synapse", str(db), "--dry-run", "--json", "--page", "2"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["dry_run"] is True
    assert summary["receipts_read"] == 6 and summary["last_stream_id"] == 6
    assert summary["client_receipts"] == 4 and summary["federation_receipts"] == 1
    assert summary["membership"] == 4 and summary["events"] == 5  # $old, $e1, $e2, $t1, $root
    assert summary["skipped"] == {"not_joined": 1}
    assert main(["import-synapse", str(db), "--dry-run", "--after-stream-id", "4"]) == 0
    out = capsys.readouterr().out
    assert "would write: 0 client receipts" in out and "1 remote receipts in 1 EDUs" in out
    assert "skipped: 1 not_joined" in out and "--after-stream-id 6" in out


@pytest.mark.broker
async def test_import_ends_in_the_receipts_table(kafka_bootstrap: str, tmp_path: Path) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path)
    db = synapse_db(tmp_path / "homeserver.db")
    summary = await import_synapse(s, str(db), page=2, progress=False)
    assert summary.client_receipts == 4 and summary.federation_edus >= 1
    log = tmp_path / "worker.log"
    assert await folded_by_a_worker(kafka_bootstrap, s, log, EXPECTED) == EXPECTED
