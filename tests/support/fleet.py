"""A fleet of real `receipt-streams` processes of one app, fed while faults happen, then judged.

One Settings per fleet (fresh topics and app id); each process gets its own data dir and web
port. Inputs are fed at a steady pace by a task of their own, so faults land mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from receipt_streams.config import Settings
from tests.support import judging
from tests.support.scenario import Room
from tests.support.worker import TopicReader, WorkerProcess, dumps, free_port, produce

Record = tuple[str, bytes, Any]


class Fleet:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.s, self.tmp = settings, tmp
        self.procs: list[WorkerProcess] = []

    def spawn(self, command: str = "worker", **update: Any) -> WorkerProcess:
        n = len(self.procs)
        s = self.s.model_copy(
            update={
                "data_dir": self.tmp / f"{command}{n}",
                "web_port": free_port(),
                "admin_port": free_port(),
                **update,
            }
        )
        proc = WorkerProcess(s, self.tmp / f"{command}{n}.log", command).start()
        self.procs.append(proc)
        return proc

    async def ready(self, *procs: WorkerProcess, timeout: float = 90) -> None:
        """Wait (off the event loop, so feeding goes on) until each answers /readyz."""
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready, timeout) for p in procs))

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=15)

    def groups(self) -> dict[str, list[str]]:
        """Every consumer group of the app and the topics it must commit to their end."""
        s = self.s
        fold = [s.topic_client, s.topic_membership, s.topic_events, s.topic_federation]
        return {
            s.app_id: [*fold, s.topic_federation_in],
            f"{s.app_id}-sync-deltas": [s.changelog_receipts],
            f"{s.app_id}-federation-edus": [s.topic_outbox],
        }


async def pass_sentinels(
    bootstrap: str, s: Settings, rooms: Sequence[Room], timeout: float
) -> None:
    """Every room's setup is folded: a sentinel receipt per room came out as a delta."""
    records, events = [], set()
    for room in rooms:
        recs, event = room.sentinel()
        records += recs
        events.add(event)
    await produce(bootstrap, records)

    def seen(rs: list[Any]) -> bool:
        got = {e for v in _values(rs) for e in v.get("receipt", {}).get("content", {})}
        return events <= got

    async with TopicReader(bootstrap, s.topic_sync) as sync:
        await sync.wait_for(seen, timeout=timeout, what="every room's sentinel")


def _values(records: list[Any]) -> list[dict]:
    return [orjson.loads(m.value) for m in records]


async def feed(bootstrap: str, records: Sequence[Record], seconds: float, chunks: int = 40) -> None:
    """Send the records in order, spread over about `seconds`, through one producer that
    rides out a broker restart (idempotent, long request timeout: no loss, no duplicate)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=90_000,
        retry_backoff_ms=200,
    )
    await producer.start()
    try:
        size = max(1, -(-len(records) // chunks))
        t0 = time.monotonic()
        for i in range(0, len(records), size):
            futures = [await producer.send(t, dumps(v), key=k) for t, k, v in records[i : i + size]]
            await asyncio.gather(*futures)
            due = t0 + seconds * (i + size) / len(records)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    finally:
        await producer.stop()


class Outputs:
    """The app's outputs read committed, accumulated while the run settles, and judged."""

    def __init__(self, bootstrap: str, s: Settings, groups: dict[str, list[str]]) -> None:
        self.bootstrap, self.s, self.groups = bootstrap, s, groups
        self.changelog = TopicReader(bootstrap, s.changelog_receipts)
        self.sync = TopicReader(bootstrap, s.topic_sync)
        self.edus = TopicReader(bootstrap, s.topic_edus)

    async def __aenter__(self) -> Outputs:
        for reader in (self.changelog, self.sync, self.edus):
            await reader.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for reader in (self.changelog, self.sync, self.edus):
            await reader.__aexit__(*exc)

    async def _drain(self) -> None:
        for reader in (self.changelog, self.sync, self.edus):
            while await reader.poll(timeout_ms=300):
                pass

    async def converging(self, expected: judging.Table) -> dict[str, list[str]]:
        """The judges that a slow but correct run eventually passes."""
        table = judging.latest_per_key(self.changelog.records)
        return {
            "table": judging.judge_table(self.changelog.records, expected),
            "deltas": judging.judge_deltas(self.sync.records, table),
            "edus": judging.judge_edus(self.edus.records, table, self.s.server_name, DESTS),
            "groups": await judging.judge_groups(self.bootstrap, self.groups),
        }

    async def verdict(
        self,
        expected: judging.Table | Callable[[], judging.Table],
        positions: judging.Positions,
        timeout: float,
        extra: Callable[[judging.Table], list[str]] | None = None,
    ) -> dict[str, list[str]]:
        """Wait (bounded) for the outputs to converge, then every judge's violations."""
        deadline = time.monotonic() + timeout
        while True:
            await self._drain()
            want = expected() if callable(expected) else expected
            result = await self.converging(want)
            if not any(result.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        table = judging.latest_per_key(self.changelog.records)
        result["backward steps"] = judging.judge_no_backward_steps(self.changelog.records)
        result["stale deltas"] = judging.judge_stale_deltas(self.sync.records, positions)
        result["private"] = judging.judge_private(self.sync.records, self.edus.records)
        if extra is not None:
            result["acknowledged"] = extra(table)
        return result


DESTS = ("hs2", "hs3")


def report(verdict: dict[str, list[str]]) -> str:
    """Failed judges, one paragraph each; empty when the run is right."""
    return "\n".join(f"[{name}] " + "\n  ".join(v) for name, v in verdict.items() if v)
