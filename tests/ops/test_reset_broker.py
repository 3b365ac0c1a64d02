"""`ctl reset` on the real broker: the plan with --dry-run moves nothing; applied (workers
stopped) it replays the inputs over the existing table, which ends exactly as before, with no
changelog record that changes a value (the fold never moves a receipt backwards)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from receipt_streams.ops import kafka
from receipt_streams.ops.groups import reset_inputs
from tests.ops.support import Ctl, table, wait_until
from tests.support.scenario import Room
from tests.support.worker import WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, B = "@a:hs1", "@b:hs1"


def changelog_after(s, start: dict) -> list[tuple[bytes, bytes | None]]:
    async def read():
        async with kafka.started(kafka.consumer(s)) as c:
            tps = await kafka.topic_partitions(c, [s.changelog_receipts])
            return [
                (r.key, r.value)
                async for r in kafka.read_records(c, tps, "", True)
                if r.offset >= start.get(TopicPartition(r.topic, r.partition), 0)
            ]

    return asyncio.run(read())


def ends(s, topics: list[str]) -> dict:
    async def read():
        async with kafka.started(kafka.consumer(s)) as c:
            return await c.end_offsets(await kafka.topic_partitions(c, topics))

    return asyncio.run(read())


def test_reset_dry_run_then_applied_replays_to_the_same_table(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ctl = Ctl(monkeypatch, capsys)
    s = worker_settings(kafka_bootstrap, tmp_path)
    room = Room(s, "!replay:hs1")
    records = [room.member(A), room.member(B)]
    records += [room.event(f"$e{i}") for i in range(1, 5)]
    records += [
        room.receipt(A, "m.read", "$e1", 1),
        room.receipt(A, "m.read", "$e3", 2),
        room.receipt(A, "m.read", "$e2", 3),  # older: ignored
        room.receipt(B, "m.read.private", "$e4", 4),
        room.receipt(B, "m.fully_read", "$e2", 5),
    ]
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        asyncio.run(produce(kafka_bootstrap, records))
        before = wait_until(lambda: t if len(t := table(s)) == 3 else None, "3 receipts")
        assert before[(room.room_id, A, "m.read", None)]["event_id"] == "$e3"
        inputs = ends(s, reset_inputs(s))
        wait_until(
            lambda: ctl(s, "status")[1]["groups"][0]["lag"] <= 2 * s.partitions, "fold commits"
        )  # what is left is the ticks' newest beats

        code, refused = ctl(s, "reset", "--to-earliest")  # a worker is running
        assert code == 2 and "active member" in refused["error"], refused
        assert "stop the workers" in refused["hint"]
        code, refused = ctl(s, "rebuild", "--local", str(s.data_dir))
        assert code == 2 and "in use" in refused["error"], refused
    finally:
        w.stop()

    committed = wait_until(
        lambda: (
            (g := asyncio.run(kafka.describe_groups(s, [s.app_id]))[s.app_id]).state == "Empty"
            and g.committed
        ),
        "the group to empty",
    )
    code, plan = ctl(s, "reset", "--to-earliest", "--dry-run")
    assert code == 0 and not plan["applied"]
    moved = {(m["topic"], m["partition"]): m for m in plan["moves"]}
    assert {t for t, _ in moved} == set(reset_inputs(s))
    for tp, end in inputs.items():
        m = moved[(tp.topic, tp.partition)]
        assert m["new"] == 0 and m["current"] == (committed.get(tp) if end else m["current"])
    assert "never moves backwards" in plan["state"]
    after_dry = asyncio.run(kafka.describe_groups(s, [s.app_id]))[s.app_id].committed
    assert after_dry == committed  # nothing moved

    changelog_end = ends(s, [s.changelog_receipts])
    code, applied = ctl(s, "reset", "--to-earliest", "--wipe-local", str(s.data_dir))
    assert code == 0 and applied["applied"] and applied["wiped"]
    now = asyncio.run(kafka.describe_groups(s, [s.app_id]))[s.app_id].committed
    assert all(now[tp] == 0 for tp in inputs if tp in now)

    w.start().wait_ready()  # restores from the changelogs, then replays every input
    try:
        wait_until(
            lambda: all(
                now.get(tp, 0) >= end
                for now in [asyncio.run(kafka.describe_groups(s, [s.app_id]))[s.app_id].committed]
                for tp, end in inputs.items()
            ),
            "the replay to reach the inputs' ends",
        )
        assert table(s) == before
        for key, value in changelog_after(s, changelog_end):
            assert value is not None and orjson.loads(value) == before[tuple(orjson.loads(key))]
    finally:
        w.stop()
