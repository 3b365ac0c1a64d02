"""A Synapse-shaped database for the import tests: the tables and columns of Synapse's schema
that `import-synapse` reads, with the same rows in SQLite or PostgreSQL.

A room of two local users and one remote one, a thread, a user who left, and a backfilled
event (negative stream ordering). Receipts' `data` is JSON text, as Synapse stores it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from receipt_streams.config import Settings
from tests.support.worker import TopicReader, WorkerProcess

ROOM = "!r:hs1"
TS = 1_700_000_000_000

# Synapse's DDL for these tables (synapse/storage/schema, full_schemas), the columns the
# import reads and the ones around them; the types are the same words in both engines.
SCHEMA = (
    """CREATE TABLE receipts_linearized (
        stream_id BIGINT NOT NULL, room_id TEXT NOT NULL, receipt_type TEXT NOT NULL,
        user_id TEXT NOT NULL, event_id TEXT NOT NULL, data TEXT NOT NULL,
        instance_name TEXT, event_stream_ordering BIGINT, thread_id TEXT)""",
    """CREATE UNIQUE INDEX receipts_linearized_uniqueness ON receipts_linearized
        (room_id, receipt_type, user_id) WHERE thread_id IS NULL""",
    """CREATE UNIQUE INDEX receipts_linearized_uniqueness_thread ON receipts_linearized
        (room_id, receipt_type, user_id, thread_id)""",
    "CREATE INDEX receipts_linearized_id ON receipts_linearized (stream_id)",
    """CREATE TABLE events (
        stream_ordering INTEGER PRIMARY KEY, topological_ordering BIGINT NOT NULL,
        event_id TEXT NOT NULL, type TEXT NOT NULL, room_id TEXT NOT NULL,
        origin_server_ts BIGINT, sender TEXT, state_key TEXT)""",
    """CREATE TABLE current_state_events (
        event_id TEXT NOT NULL, room_id TEXT NOT NULL, type TEXT NOT NULL,
        state_key TEXT NOT NULL, membership TEXT)""",
    """CREATE TABLE event_relations (
        event_id TEXT NOT NULL, relates_to_id TEXT NOT NULL, relation_type TEXT NOT NULL,
        aggregation_key TEXT)""",
)

MEMBERS = [("@a:hs1", "join"), ("@b:hs1", "join"), ("@r:hs2", "join"), ("@gone:hs1", "leave")]
MESSAGES = ("$e1", "$e2", "$root", "$t1")
RECEIPTS = [  # (user, receipt type, event, thread), in stream order
    ("@a:hs1", "m.read", "$e2", None),
    ("@a:hs1", "m.read.private", "$e1", None),
    ("@b:hs1", "m.read", "$t1", "$root"),
    ("@b:hs1", "m.read", "$old", None),
    ("@r:hs2", "m.read", "$e2", None),
    ("@gone:hs1", "m.read", "$e1", None),
]

EXPECTED = {  # the receipts table after the import: key -> event_id
    (ROOM, "@a:hs1", "m.read", None): "$e2",
    (ROOM, "@a:hs1", "m.read.private", None): "$e1",
    (ROOM, "@b:hs1", "m.read", "$root"): "$t1",
    (ROOM, "@b:hs1", "m.read", None): "$old",
    (ROOM, "@r:hs2", "m.read", None): "$e2",
}


def fill(execute: Callable[[str, Sequence[Any]], Any], stream_ids: Sequence[int]) -> None:
    """Create the tables and rows through `execute(sql with ? placeholders, params)`; the
    receipts get `stream_ids` (Synapse's have gaps: an updated receipt deletes its old row)."""
    for ddl in SCHEMA:
        execute(ddl, ())
    pos = 0
    for user, membership in MEMBERS:
        pos += 1
        execute(
            "INSERT INTO events VALUES (?, ?, ?, 'm.room.member', ?, ?, ?, ?)",
            (pos, pos, f"$m{pos}", ROOM, TS + pos, user, user),
        )
        execute(
            "INSERT INTO current_state_events VALUES (?, ?, 'm.room.member', ?, ?)",
            (f"$m{pos}", ROOM, user, membership),
        )
    for event_id in MESSAGES:
        pos += 1
        execute(
            "INSERT INTO events VALUES (?, ?, ?, 'm.room.message', ?, ?, '@a:hs1', NULL)",
            (pos, pos, event_id, ROOM, TS + pos),
        )
    execute(  # backfilled: a negative stream ordering
        "INSERT INTO events VALUES (-3, 1, '$old', 'm.room.message', ?, ?, '@r:hs2', NULL)",
        (ROOM, TS),
    )
    execute("INSERT INTO event_relations VALUES ('$t1', '$root', 'm.thread', NULL)", ())
    assert len(stream_ids) == len(RECEIPTS)
    for stream_id, (user, receipt_type, event_id, thread) in zip(stream_ids, RECEIPTS, strict=True):
        execute(
            "INSERT INTO receipts_linearized VALUES (?, ?, ?, ?, ?, ?, 'master', NULL, ?)",
            (stream_id, ROOM, receipt_type, user, event_id,
             orjson.dumps({"ts": TS + stream_id}).decode(), thread),
        )  # fmt: skip


def sqlite_db(path: Path) -> Path:
    db = sqlite3.connect(path)
    fill(db.execute, range(1, len(RECEIPTS) + 1))
    db.commit()
    db.close()
    return path


def postgres_db(dsn: str, stream_ids: Sequence[int]) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        fill(lambda sql, params: conn.execute(sql.replace("?", "%s"), params), stream_ids)


def receipts_table(records: list[Any]) -> dict[Any, Any]:
    """The receipts changelog's last event per key (None: a tombstone)."""
    out = {}
    for m in records:
        out[tuple(orjson.loads(m.key))] = orjson.loads(m.value)["event_id"] if m.value else None
    return out


async def folded_by_a_worker(
    bootstrap: str, s: Settings, log: Path, expected: dict[Any, Any]
) -> dict[Any, Any]:
    """Start a worker on what was imported; once `expected`'s keys are folded (and a second
    more for anything else), the receipts table it wrote."""
    worker = WorkerProcess(s, log)
    try:
        await asyncio.to_thread(worker.start().wait_ready)
        async with TopicReader(bootstrap, s.changelog_receipts) as changelog:
            await changelog.wait_for(
                lambda r: set(expected) <= set(receipts_table(r)),
                timeout=60,
                what="the imported receipts",
            )
            await asyncio.sleep(1)  # nothing else arrives
            await changelog.poll()
            return receipts_table(changelog.records)
    finally:
        worker.stop()
