"""`receipt-streams export`: the receipts table and the history feed as Parquet, for analysts.

- `receipts.parquet`: the table, i.e. the receipts changelog read (read_committed) up to its
  end as seen at the start, the last value per key, tombstones dropping keys.
- `history.parquet`: the history topic's records whose `ts` is in the range asked, when the
  topic exists.
- `manifest.json`: what was read (offsets, counts, range) and when.

Both files also forget what the admin topic says was purged or erased, even where the fold
has not reached the command yet or the history (append-only, kept for its retention) still
holds it: a record of a purged room or an erased user is left out when it was written (its
Kafka timestamp) at or before the command, and a history record also when its receipt's `ts`
is at or before the command's `ts`. So the next export after a purge or an erasure no longer
holds them, and re-exporting is how an older export is made to forget.

Records go to newline-delimited JSON files as they are read (memory stays flat whatever the
table's size); DuckDB keeps each key's last value and writes the Parquet.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from receipt_streams.config import Settings
from receipt_streams.ops.kafka import consumer, partitions, read_records, started
from receipt_streams.ops.timespec import iso

KEY_FIELDS = ("room_id", "user_id", "receipt_type", "thread_id")

RECEIPT_COLUMNS = {
    "partition": "INTEGER",
    "offset": "BIGINT",
    "written_ms": "BIGINT",
    "deleted": "BOOLEAN",
    "room_id": "VARCHAR",
    "user_id": "VARCHAR",
    "receipt_type": "VARCHAR",
    "thread_id": "VARCHAR",
    "event_id": "VARCHAR",
    "stream_pos": "BIGINT",
    "ts": "BIGINT",
    "data": "VARCHAR",
}
HISTORY_COLUMNS = {
    "written_ms": "BIGINT",
    "room_id": "VARCHAR",
    "user_id": "VARCHAR",
    "receipt_type": "VARCHAR",
    "thread_id": "VARCHAR",
    "event_id": "VARCHAR",
    "previous_event_id": "VARCHAR",
    "origin_server_ts": "BIGINT",
    "ts": "BIGINT",
    "time_to_read_ms": "BIGINT",
    "source": "VARCHAR",
}
REMOVAL_COLUMNS = {"kind": "VARCHAR", "target": "VARCHAR", "written_ms": "BIGINT", "ts": "BIGINT"}


# --- records -> rows (pure) ------------------------------------------------------------


def receipt_row(
    partition: int, offset: int, written_ms: int, key: bytes, value: bytes | None
) -> dict[str, Any]:
    """One receipts-changelog record as a row (a tombstone: `deleted`, no value fields)."""
    room_id, user_id, receipt_type, thread_id = orjson.loads(key)
    row: dict[str, Any] = {
        "partition": partition,
        "offset": offset,
        "written_ms": written_ms,
        "deleted": value is None,
        "room_id": room_id,
        "user_id": user_id,
        "receipt_type": receipt_type,
        "thread_id": thread_id,
    }
    if value is not None:
        v = orjson.loads(value)
        row |= {
            "event_id": v["event_id"],
            "stream_pos": v.get("stream_pos"),
            "ts": v["ts"],
            "data": orjson.dumps(v.get("data", {})).decode(),
        }
    return row


def _key_of(value: dict[str, Any], raw_key: bytes | None) -> list[Any]:
    """The slot of a history record: its `key` field (an array, or an object with the four
    fields), or the four fields in the value, or the record key (the changelog's array)."""
    key = value.get("key")
    if isinstance(key, list) and len(key) == 4:
        return key
    if isinstance(key, dict):
        return [key.get(f) for f in KEY_FIELDS]
    if all(f in value for f in KEY_FIELDS[:3]):
        return [value.get(f) for f in KEY_FIELDS]
    parsed = orjson.loads(raw_key) if raw_key else None
    if isinstance(parsed, list) and len(parsed) == 4:
        return parsed
    raise ValueError("history record without a key")


def history_row(written_ms: int, raw_key: bytes | None, raw_value: bytes) -> dict[str, Any]:
    """One history-feed record as a row; raises ValueError for a record of another shape."""
    try:
        v = orjson.loads(raw_value)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(v, dict) or not isinstance(v.get("ts"), int):
        raise ValueError("history record without ts")
    room_id, user_id, receipt_type, thread_id = _key_of(v, raw_key)
    return {
        "written_ms": written_ms,
        "room_id": room_id,
        "user_id": user_id,
        "receipt_type": receipt_type,
        "thread_id": thread_id,
        "event_id": v.get("event_id"),
        "previous_event_id": v.get("previous_event_id"),
        "origin_server_ts": v.get("origin_server_ts"),
        "ts": v["ts"],
        "time_to_read_ms": v.get("time_to_read_ms"),
        "source": v.get("source"),
    }


def removal_row(written_ms: int, raw_value: bytes | None) -> dict[str, Any] | None:
    """An admin command as a removal (`room` or `user`, its target, when it was written), or
    None for anything else (a bad command was refused by the fold too)."""
    try:
        v = orjson.loads(raw_value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(v, dict):
        return None
    ts = v.get("ts") if isinstance(v.get("ts"), int) else written_ms
    if v.get("command") == "purge_room" and isinstance(v.get("room_id"), str):
        return {"kind": "room", "target": v["room_id"], "written_ms": written_ms, "ts": ts}
    if v.get("command") == "erase_user" and isinstance(v.get("user_id"), str):
        return {"kind": "user", "target": v["user_id"], "written_ms": written_ms, "ts": ts}
    return None


# --- SQL -------------------------------------------------------------------------------


def _lit(path: Path) -> str:
    """A path as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _source(path: Path, columns: dict[str, str]) -> str:
    cols = ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items())
    return f"read_json({_lit(path)}, format='newline_delimited', columns={{{cols}}})"


def _kept(alias: str, by_ts: bool) -> str:
    """Rows not removed by a purge of their room or an erasure of their user: written (their
    Kafka timestamp) at or before the command, or with `by_ts` (the history), also a
    receipt whose `ts` is at or before the command's `ts` (one folded after the command was
    written but before the fold reached it, when the fold lagged)."""
    older = f"r.written_ms >= {alias}.written_ms"
    if by_ts:
        older = f"({older} OR r.ts >= {alias}.ts)"
    return f"""NOT EXISTS (
        SELECT 1 FROM removals r
        WHERE {older}
          AND ((r.kind = 'room' AND r.target = {alias}.room_id)
            OR (r.kind = 'user' AND r.target = {alias}.user_id)))"""


def table_sql(rows: Path, out: Path) -> str:
    return f"""COPY (
        SELECT room_id, user_id, receipt_type, thread_id, event_id, stream_pos, ts,
               epoch_ms(ts) AS receipt_time, data
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY room_id, user_id, receipt_type, thread_id
                ORDER BY partition DESC, "offset" DESC) AS newest
            FROM {_source(rows, RECEIPT_COLUMNS)}
        ) c
        WHERE newest = 1 AND NOT deleted AND {_kept("c", by_ts=False)}
        ORDER BY room_id, user_id, receipt_type, thread_id NULLS FIRST
    ) TO {_lit(out)} (FORMAT parquet)"""


def history_sql(rows: Path, out: Path, since: int | None, until: int | None) -> str:
    where = [_kept("h", by_ts=True)]
    if since is not None:
        where.append(f"ts >= {int(since)}")
    if until is not None:
        where.append(f"ts < {int(until)}")
    return f"""COPY (
        SELECT room_id, user_id, receipt_type, thread_id, event_id, previous_event_id,
               origin_server_ts, ts, epoch_ms(ts) AS receipt_time, time_to_read_ms, source
        FROM {_source(rows, HISTORY_COLUMNS)} h
        WHERE {" AND ".join(where)}
        ORDER BY ts, room_id, user_id
    ) TO {_lit(out)} (FORMAT parquet)"""


# --- Kafka -> files --------------------------------------------------------------------


# The history is read from the first record written (Kafka timestamp) this long before
# `--since`: a change is written when it is folded, after its receipt's `ts`, so nothing with
# `ts >= since` comes earlier, short of a remote server's clock more than a day ahead.
HISTORY_SLACK_MS = 86_400_000


async def _starts(
    c: AIOKafkaConsumer, tps: list[TopicPartition], since: int | None
) -> dict[TopicPartition, int]:
    """Where to start reading each partition: the beginning, or with `since` the first
    offset written at or after `since - HISTORY_SLACK_MS` (the end when there is none)."""
    begin = await c.beginning_offsets(tps)
    if since is None:
        return begin
    end = await c.end_offsets(tps)
    found = await c.offsets_for_times({tp: max(since - HISTORY_SLACK_MS, 0) for tp in tps})
    return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}


async def _read_from(
    c: AIOKafkaConsumer, starts: dict[TopicPartition, int], what: str, quiet: bool
) -> AsyncIterator[Any]:
    """Every committed record from `starts` to the end seen now, with a progress bar."""
    async for record in read_records(c, list(starts), what, quiet, starts=starts):
        yield record


async def _dump(
    s: Settings, topic: str, path: Path, quiet: bool, to_row: Any, since: int | None = None
) -> dict[str, Any]:
    """Read `topic` (read_committed, to the end seen at the start; with `since`, from
    `_starts`) into `path`, one row per record `to_row` accepts. Returns counts and the
    offsets read."""
    rows = skipped = 0
    async with started(consumer(s)) as c:
        parts = await partitions(c, topic, required=False)
        if not parts:
            return {"topic": topic, "exists": False}
        tps = [TopicPartition(topic, p) for p in parts]
        starts = await _starts(c, tps, since)
        ends = {tp.partition: off for tp, off in (await c.end_offsets(tps)).items()}
        with path.open("wb") as f:
            async for r in _read_from(c, starts, f"reading {topic}", quiet):
                try:
                    row = to_row(r)
                except (ValueError, KeyError, TypeError):
                    row = None
                if row is None:
                    skipped += 1
                    continue
                f.write(orjson.dumps(row) + b"\n")
                rows += 1
    return {
        "topic": topic,
        "exists": True,
        "records": rows,
        "skipped": skipped,
        "starts": {tp.partition: off for tp, off in starts.items()},
        "ends": ends,
    }


async def read_all(
    s: Settings, work: Path, quiet: bool, history: bool, since: int | None = None
) -> dict[str, Any]:
    """The admin topic, the receipts changelog and (when asked) the history topic, each into
    its rows file in `work`."""
    removals = await _dump(
        s,
        s.topic_admin,
        work / "removals.ndjson",
        quiet,
        lambda r: removal_row(r.timestamp, r.value),
    )
    table = await _dump(
        s,
        s.changelog_receipts,
        work / "receipts.ndjson",
        quiet,
        lambda r: receipt_row(r.partition, r.offset, r.timestamp, r.key, r.value),
    )
    hist: dict[str, Any] = {"topic": s.topic_history, "exists": False}
    if history:
        hist = await _dump(
            s,
            s.topic_history,
            work / "history.ndjson",
            quiet,
            lambda r: history_row(r.timestamp, r.key, r.value),
            since,
        )
    return {"removals": removals, "receipts": table, "history": hist}


def export(
    s: Settings,
    out: Path,
    since: int | None = None,
    until: int | None = None,
    quiet: bool = False,
    history: bool = True,
) -> dict[str, Any]:
    """Write `receipts.parquet`, `history.parquet` (when the history topic exists and
    `history`) and `manifest.json` into `out`; files are replaced whole (written aside,
    then renamed), and a history file left by an earlier export is removed when no history
    is exported now."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".export-{os.getpid()}"
    work.mkdir(exist_ok=True)
    started_ms = int(time.time() * 1000)
    try:
        for name in ("removals", "receipts"):  # an absent topic: no rows
            (work / f"{name}.ndjson").write_bytes(b"")
        read = asyncio.run(read_all(s, work, quiet, history, since))
        table, hist = read["receipts"], read["history"]
        db = duckdb.connect()
        try:
            db.execute(
                "CREATE TABLE removals AS SELECT * FROM "
                + _source(work / "removals.ndjson", REMOVAL_COLUMNS)
            )
            db.execute(table_sql(work / "receipts.ndjson", work / "receipts.parquet"))
            table["rows"] = _count(db, work / "receipts.parquet")
            if hist["exists"]:
                db.execute(
                    history_sql(work / "history.ndjson", work / "history.parquet", since, until)
                )
                hist["rows"] = _count(db, work / "history.parquet")
                hist["since"], hist["until"] = iso(since), iso(until)
        finally:
            db.close()
        manifest = {
            "exported_at": iso(started_ms),
            "receipts": table,
            "history": hist,
            "removals": read["removals"].get("records", 0),
        }
        (work / "receipts.parquet").replace(out / "receipts.parquet")
        if hist["exists"]:
            (work / "history.parquet").replace(out / "history.parquet")
        else:
            (out / "history.parquet").unlink(missing_ok=True)
        (out / "manifest.json").write_bytes(
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        return manifest
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()


def _count(db: duckdb.DuckDBPyConnection, path: Path) -> int:
    row = db.execute(f"SELECT count(*) FROM read_parquet({_lit(path)})").fetchone()
    return int(row[0]) if row else 0


def render(manifest: dict[str, Any], out: Path) -> str:
    lines = [f"{out / 'receipts.parquet'}: {manifest['receipts'].get('rows', 0)} receipts"]
    hist = manifest["history"]
    if hist.get("exists"):
        span = f"{hist.get('since') or 'start'} .. {hist.get('until') or 'end'}"
        lines.append(f"{out / 'history.parquet'}: {hist['rows']} changes ({span})")
    else:
        lines.append(f"no history: topic {hist['topic']!r} does not exist")
    if manifest["removals"]:
        lines.append(f"{manifest['removals']} purge/erase command(s) applied")
    return "\n".join(lines)
