"""`receipt-streams export` on the real broker, and the README's DuckDB queries run verbatim
on its files, against figures computed here from the seeded workload.

The workload is written straight to the topics the exporter reads (the receipts changelog,
a history topic in the history feed's record shape, the admin topic), so every figure is
known exactly: several rooms, users and days, tombstones, null times-to-read, private and
fully-read slots, a purge and an erasure with records before and after them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from receipt_streams.adapters.sending import partition_of
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.config import Settings
from receipt_streams.entrypoints.cli import main
from tests.support.worker import settings_env, worker_settings

pytestmark = pytest.mark.broker

README = Path(__file__).parents[2] / "README.md"
QUERIES = (
    "read rate per room and day",
    "median and p90 time-to-read per room",
    "active readers per room per day",
    "share of private receipts",
)
DAY0 = 1_764_547_200_000  # 2025-12-01T00:00Z
DAY = 86_400_000
ROOMS = [f"!room{i}:hs1" for i in range(5)]
USERS = [f"@user{i}:hs{1 + i % 2}" for i in range(8)]
PURGED, ERASED = ROOMS[4], USERS[7]
CMD_TS = DAY0 + 2 * DAY  # the commands' own `ts`: when the operator issued them


def readme_queries() -> dict[str, str]:
    """The README's ```sql blocks, by their first line's `-- name` comment."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    named = {b.splitlines()[0].removeprefix("-- ").strip(): b for b in blocks}
    return {name: named[name] for name in QUERIES}


def quantile_cont(values: list[int], q: float) -> float:
    """Linear interpolation between the closest ranks (DuckDB's quantile_cont)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def day_of(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts / 1000, dt.UTC).date()


class Workload:
    """Records for the three topics, and what the export must hold."""

    def __init__(self, seed: int = 7) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        self.changelog: list[tuple[bytes, bytes | None]] = []
        self.table: dict[tuple, dict[str, Any]] = {}
        self.history: list[tuple[bytes, dict[str, Any]]] = []
        # Kafka timestamps of the seeded history records: written as the fold would, half a
        # second after their receipt (later records are written now).
        self.written: dict[str, int] = {}
        self.backdate = False
        self.pos = 0

    def receipt(self, room: str, user: str, rtype: str, thread: str | None, ts: int) -> None:
        self.pos += 1
        key = (room, user, rtype, thread)
        value = {"event_id": f"$e{self.pos}", "stream_pos": self.pos, "ts": ts, "data": {"ts": ts}}
        self.changelog.append((orjson.dumps(list(key)), orjson.dumps(value)))
        self.table[key] = value

    def tombstone(self, key: tuple) -> None:
        self.changelog.append((orjson.dumps(list(key)), None))
        self.table.pop(key, None)

    def change(self, room: str, user: str, ts: int, ttr: int | None, rtype: str = "m.read") -> None:
        """A history record as the history feed writes it (`receipts.history.v1`: the slot's
        fields in the value, the changelog's key array as the record key); one in three in
        the other layout the exporter reads (the slot as a `key` array in the value)."""
        self.pos += 1
        slot = [room, user, rtype, None]
        value: dict[str, Any] = {
            "event_id": f"$h{self.pos}",
            "stream_pos": self.pos,
            "ts": ts,
            "previous_event_id": None,
            "previous_stream_pos": None,
            "previous_ts": None,
            "origin_server_ts": None if ttr is None else ts - ttr,
            "time_to_read_ms": ttr,
            "source": self.rnd.choice(["client", "federation"]),
        }
        if self.pos % 3:
            value |= dict(
                zip(("room_id", "user_id", "receipt_type", "thread_id"), slot, strict=True)
            )
        else:
            value["key"] = slot
        self.history.append((orjson.dumps(slot), value))
        if self.backdate:
            self.written[value["event_id"]] = ts + 500

    @staticmethod
    def slot(value: dict[str, Any]) -> list[Any]:
        return value.get("key") or [value[f] for f in ("room_id", "user_id", "receipt_type")]

    def seed(self) -> None:
        rnd = self.rnd
        for _ in range(400):
            room, user = rnd.choice(ROOMS), rnd.choice(USERS)
            rtype = rnd.choices(["m.read", "m.read.private", "m.fully_read"], [7, 2, 1])[0]
            thread = rnd.choice([None, None, "main"]) if rtype != "m.fully_read" else None
            self.receipt(room, user, rtype, thread, DAY0 + rnd.randrange(3 * DAY))
        for key in rnd.sample(sorted(self.table, key=str), 20):
            self.tombstone(key)
        self.backdate = True
        self.backdate = True
        for _ in range(600):
            ttr = rnd.choice([None, rnd.randrange(100, 600_000), rnd.randrange(10, 5_000)])
            rtype = "m.read" if rnd.random() < 0.9 else "m.fully_read"
            self.change(
                rnd.choice(ROOMS), rnd.choice(USERS), DAY0 + rnd.randrange(3 * DAY), ttr, rtype
            )
        self.backdate = False

    def after_removals(self) -> None:
        """What the fold would write after the commands: the purged room lives again."""
        self.receipt(PURGED, USERS[0], "m.read", None, DAY0 + 2 * DAY + 5)
        self.change(PURGED, USERS[0], DAY0 + 2 * DAY + 5, 1_234)
        self.receipt(ROOMS[0], ERASED, "m.read", None, DAY0 + 2 * DAY + 6)
        self.change(ROOMS[0], ERASED, DAY0 + 2 * DAY + 6, None)

    def forget(self) -> None:
        """Apply the purge and the erasure to the expectations."""
        self.table = {k: v for k, v in self.table.items() if k[0] != PURGED and k[1] != ERASED}
        self.history = [
            (k, v)
            for k, v in self.history
            if self.slot(v)[0] != PURGED and self.slot(v)[1] != ERASED
        ]


async def create_history_topic(s: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(s.topic_history, s.partitions, 1)])
    finally:
        await admin.close()


async def produce(s: Settings, records: list[tuple]) -> None:
    """(topic, key, value, partition or None[, Kafka timestamp in ms])."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                r[0], r[2], key=r[1], partition=r[3], timestamp_ms=(r[4:] or [None])[0]
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: Any, s: Settings, *argv: str) -> Any:
    for name, value in settings_env(s).items():
        if name.startswith("RECEIPT_STREAMS_"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main([*argv, "--quiet", "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_export_then_the_readme_queries_give_the_workloads_figures(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path)
    asyncio.run(ensure_topics(s))
    asyncio.run(create_history_topic(s))
    w = Workload()
    w.seed()
    n = s.partitions

    def records(changelog: list, history: list) -> list:
        out = [
            (s.changelog_receipts, k, v, partition_of(orjson.loads(k)[0].encode(), n))
            for k, v in changelog
        ]
        # In the order the fold writes them: by Kafka timestamp (its time index needs that).
        history = sorted(history, key=lambda kv: w.written.get(kv[1]["event_id"], 0))
        out += [
            (s.topic_history, k, orjson.dumps(v), None, w.written.get(v["event_id"]))
            for k, v in history
        ]
        return out

    asyncio.run(produce(s, records(w.changelog, w.history)))
    time.sleep(0.05)  # the commands come strictly later (Kafka timestamps in ms)
    commands = [
        (
            s.topic_admin,
            PURGED.encode(),
            orjson.dumps({"command": "purge_room", "room_id": PURGED, "ts": CMD_TS}),
            None,
        )
    ] + [
        (
            s.topic_admin,
            ERASED.encode(),
            orjson.dumps({"command": "erase_user", "user_id": ERASED, "ts": CMD_TS}),
            p,
        )
        for p in range(n)
    ]
    asyncio.run(produce(s, commands))
    time.sleep(0.05)
    before = (len(w.table), len(w.history))
    w.forget()
    assert len(w.table) < before[0] and len(w.history) < before[1]  # there was something
    done = (len(w.changelog), len(w.history))
    w.after_removals()
    asyncio.run(produce(s, records(w.changelog[done[0] :], w.history[done[1] :])))
    # A receipt made before the commands but folded after they were written (the fold
    # lagged): its history record is newer than the commands, its `ts` older. Left out.
    lagging = Workload(seed=8)
    lagging.change(PURGED, USERS[1], CMD_TS - 1, 50)
    lagging.change(ROOMS[1], ERASED, CMD_TS - 1, 60)
    asyncio.run(produce(s, records([], lagging.history)))

    manifest = run_cli(monkeypatch, capsys, s, "export", "--out", str(tmp_path / "export"))
    assert manifest["receipts"]["rows"] == len(w.table)
    assert manifest["history"]["rows"] == len(w.history)
    assert manifest["removals"] == 1 + n

    # The table file: exactly the expected table, one row per key.
    got = duckdb.sql(
        f"SELECT room_id, user_id, receipt_type, thread_id, event_id, stream_pos, ts "
        f"FROM '{tmp_path}/export/receipts.parquet'"
    ).fetchall()
    assert {r[:4]: {"event_id": r[4], "stream_pos": r[5], "ts": r[6]} for r in got} == {
        k: {f: v[f] for f in ("event_id", "stream_pos", "ts")} for k, v in w.table.items()
    }
    assert len(got) == len(w.table)
    assert {r[:4] for r in got if PURGED in r or ERASED in r} == {
        (PURGED, USERS[0], "m.read", None),  # written after the purge: the room's new life
        (ROOMS[0], ERASED, "m.read", None),  # after the erasure
    }

    monkeypatch.chdir(tmp_path)  # the queries read 'export/...'
    q = readme_queries()
    hist = [v for _, v in w.history]
    slot = Workload.slot
    reads = [v for v in hist if slot(v)[2] == "m.read"]

    rate: dict[tuple, int] = defaultdict(int)
    for v in reads:
        rate[slot(v)[0], day_of(v["ts"])] += 1
    assert {(r, d): c for r, d, c in duckdb.sql(q[QUERIES[0]]).fetchall()} == rate

    timed: dict[str, list[int]] = defaultdict(list)
    for v in reads:
        if v["time_to_read_ms"] is not None:
            timed[slot(v)[0]].append(v["time_to_read_ms"])
    rows = duckdb.sql(q[QUERIES[1]]).fetchall()
    assert [r[0] for r in rows] == sorted(timed)
    for room, count, median, p90 in rows:
        assert count == len(timed[room])
        assert median == pytest.approx(quantile_cont(timed[room], 0.5))
        assert p90 == pytest.approx(quantile_cont(timed[room], 0.9))

    active: dict[tuple, set[str]] = defaultdict(set)
    for v in hist:
        active[slot(v)[0], day_of(v["ts"])].add(slot(v)[1])
    assert {(r, d): c for r, d, c in duckdb.sql(q[QUERIES[2]]).fetchall()} == {
        k: len(users) for k, users in active.items()
    }

    private = sum(1 for k in w.table if k[2] == "m.read.private")
    read = sum(1 for k in w.table if k[2] in ("m.read", "m.read.private"))
    [(got_private, got_read, share)] = duckdb.sql(q[QUERIES[3]]).fetchall()
    assert (got_private, got_read) == (private, read)
    assert float(share) == pytest.approx(round(private / read, 4))
    assert 0 < private < read

    # A time range: only the history's changes with ts in [since, until).
    since, until = DAY0 + 2 * DAY, DAY0 + 3 * DAY - DAY // 2
    manifest = run_cli(
        monkeypatch,
        capsys,
        s,
        "export",
        "--out",
        "ranged",
        "--since",
        str(since),
        "--until",
        str(until),
    )
    assert manifest["history"]["rows"] == sum(1 for v in hist if since <= v["ts"] < until) > 0
    # Read from a day before `since` by Kafka timestamp, not from the beginning.
    seeded = sorted(w.written.values())
    skipped = sum(1 for t in seeded if t < since - DAY)
    assert 0 < skipped < len(seeded)
    read = manifest["history"]["records"] + manifest["history"]["skipped"]
    assert read == 600 + 2 + 2 - skipped  # seeded, after the commands, lagging
    assert manifest["receipts"]["rows"] == len(w.table)
