"""SIGKILL the worker mid-stream, several times at different points: nothing is lost.

The final table (the compacted changelog) must equal a reference fold computed here; the view
rebuilt by applying every emitted delta in order must equal the table's view; and for each
remote server, the latest EDU entry per (room, user, thread) must equal the table's m.read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.engines import ENGINES
from tests.support.judging import latest_edu_entries, latest_per_key, views_from_deltas, views_of
from tests.support.scenario import SENTINEL, deltas_until_sentinel
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings
from tests.support.workload import build_workload, reference_table

pytestmark = pytest.mark.broker

# Kill once this many changes were accepted since the chunk was sent. They are counted on the
# history feed, which has each accepted change once (every type, here); the changelog has one
# record per key a batch changed, fewer as batches grow.
KILL_AFTER = [5, 150, 450]
CHUNK = 1000


@pytest.mark.parametrize("engine", ENGINES)
async def test_sigkill_at_any_point_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, engine: str
) -> None:
    s = worker_settings(
        kafka_bootstrap,
        tmp_path,
        partitions=3,
        engine=engine,
        history_include_private=True,
        history_include_fully_read=True,
    )
    work = build_workload(
        s, seed=7, rooms=4, users=12, events=120, receipts=CHUNK * len(KILL_AFTER) + 400
    )
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    worker.wait_ready()
    try:
        await produce(kafka_bootstrap, work.setup)
        async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:
            # Barrier: every room's setup is folded before any receipt is sent.
            start = 0
            for room in work.rooms:
                records, event = room.sentinel()
                await produce(kafka_bootstrap, records)
                _, start = await deltas_until_sentinel(sync, start, event, timeout=60)

        async with (
            TopicReader(kafka_bootstrap, s.changelog_receipts) as changelog,
            TopicReader(kafka_bootstrap, s.topic_history) as history,
        ):
            await history.poll()
            for i, threshold in enumerate(KILL_AFTER):
                before = len(history.records)
                await produce(kafka_bootstrap, work.receipts[i * CHUNK : (i + 1) * CHUNK])
                await history.wait_for(
                    lambda r, b=before, t=threshold: len(r) >= b + t,
                    timeout=60,
                    what=f"{threshold} changes",
                )
                worker.kill()
                worker.start().wait_ready()
            await produce(kafka_bootstrap, work.receipts[len(KILL_AFTER) * CHUNK :])

            expected = reference_table(work)
            try:
                await changelog.wait_for(
                    lambda r: latest_per_key(r) == expected, timeout=90, what="the reference table"
                )
            except TimeoutError:
                got = latest_per_key(changelog.records)
                got = {k: v for k, v in got.items() if k[1] != "@sentinel:hs1"}
                diff = {
                    k: (got.get(k), expected.get(k))
                    for k in set(got) | set(expected)
                    if got.get(k) != expected.get(k)
                }
                pytest.fail(f"{len(diff)} slots differ (got, expected): {list(diff.items())[:5]}")
        if engine == "batch":  # exactly once: each change once on the feeds too
            await check_feeds(kafka_bootstrap, s, expected)
        log = worker.log_path.read_text()
        if engine == "faust":
            # Faust's store may hold writes that no changelog has: wiped after each kill.
            assert log.count("rebuilding tables from changelogs") == 3
        else:
            # The batch engine's stores are changelog prefixes: restored, never wiped.
            assert log.count("stores restored") >= 4
            assert "rebuilding tables" not in log

        async with TopicReader(kafka_bootstrap, s.topic_sync) as sync:

            def view_matches(records: list) -> bool:
                return views_from_deltas(records) == views_of(expected)

            await sync.wait_for(view_matches, timeout=60, what="deltas matching the table")

        federated = {
            (k[0], k[1], k[3]): v["event_id"] for k, v in expected.items() if k[2] == "m.read"
        }
        async with TopicReader(kafka_bootstrap, s.topic_edus) as edus:

            def edus_match(records: list) -> bool:
                return all(latest_edu_entries(records, d) == federated for d in ("hs2", "hs3"))

            await edus.wait_for(edus_match, timeout=60, what="EDUs matching the table")
    finally:
        worker.stop()


async def read_to_end(reader: TopicReader) -> None:
    consumer = reader._consumer
    assert consumer is not None
    ends = await consumer.end_offsets(list(consumer.assignment()))
    for tp, end in ends.items():
        while await consumer.position(tp) < end:
            await reader.poll(500)


async def check_feeds(bootstrap: str, s: Any, expected: dict[tuple, dict[str, Any]]) -> None:
    """Across the kills, the history is one unbroken chain per key (each record's previous
    event is the one before it: nothing lost, nothing twice) ending at the table, and the
    read positions only moved forward and end at the merged table."""
    async with TopicReader(bootstrap, s.topic_history) as history:
        await read_to_end(history)
        chains: dict[tuple, list[dict[str, Any]]] = {}
        for v in history.values():
            key = (v["room_id"], v["user_id"], v["receipt_type"], v["thread_id"])
            chains.setdefault(key, []).append(v)
    chains = {k: c for k, c in chains.items() if k[1] != SENTINEL}
    assert set(chains) == set(expected)  # every type: the test puts them all in the history
    for key, chain in chains.items():
        previous = [None] + [v["event_id"] for v in chain[:-1]]
        assert [v["previous_event_id"] for v in chain] == previous, key
        assert chain[-1]["event_id"] == expected[key]["event_id"], key
    async with TopicReader(bootstrap, s.topic_read_positions) as positions:
        await read_to_end(positions)
        last: dict[tuple, dict[str, Any]] = {}
        for v in positions.values():
            key = (v["room_id"], v["user_id"], v["thread_id"])
            if key in last:
                assert v["stream_pos"] > last[key]["stream_pos"], key
            last[key] = v
    merged: dict[tuple, int] = {}
    for (room, user, rtype, thread), v in expected.items():
        if rtype != "m.fully_read" and user.endswith(":hs1") and v["stream_pos"] is not None:
            key = (room, user, thread)
            merged[key] = max(merged.get(key, -1), v["stream_pos"])
    got = {k: v["stream_pos"] for k, v in last.items() if k[1] != SENTINEL}
    assert got == merged
