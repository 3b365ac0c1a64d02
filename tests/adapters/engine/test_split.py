"""The fold engine's split, without a broker (issue 12): a sink refuses every batch whose
changelog writes or outputs name a poisoned user, as a broker refuses a record. The batch
fails, the engine rolls every task back to its stores and splits it: the poisoned users'
records are parked (in order, with the offset past each), and the stores end exactly as
folding the other records alone would leave them, each folded once, in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.adapters.effects import Router, Tally
from receipt_streams.adapters.engine.checkpoint import BatchFailed, Checkpoint
from receipt_streams.adapters.engine.runner import FoldEngine
from receipt_streams.adapters.engine.stores import MemoryStore
from receipt_streams.adapters.engine.task import PartitionTask
from receipt_streams.adapters.parking import ParkedLog
from receipt_streams.config import Settings
from receipt_streams.core.processor import Processor

CLIENT, MEMBERSHIP, EVENTS, DLQ = "c", "m", "e", "dlq"
ROOM = "!r:hs1"
USERS = [f"@u{i}:hs1" for i in range(6)]
S = Settings(topic_client=CLIENT, topic_membership=MEMBERSHIP, topic_events=EVENTS, topic_dlq=DLQ)


class RefusingSink:
    """Takes a batch unless a record of it (DLQ records aside) names a poisoned user."""

    def __init__(self, poison: set[str]) -> None:
        self.poison = [u.encode() for u in poison]
        self.outputs: list[Any] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.resets = 0

    async def publish(self, steps: Any, offsets: Any, apart: bool = False) -> dict[Any, int]:
        records = [r for step in steps for r in step]
        for topic, key, value, _ in records:
            if topic != DLQ and any(u in (key or b"") + (value or b"") for u in self.poison):
                raise MessageSizeTooLargeError()
        self.outputs += records
        self.offsets.update(offsets)
        return {}

    async def reset(self) -> None:
        self.resets += 1


class NoConsumer:
    def assignment(self) -> set[TopicPartition]:
        return set()


def records(receipts: list[tuple[int, int]]) -> list[Any]:
    """Joins of every user, five events, then the receipts (user, event), one partition."""
    offsets = {CLIENT: 0, MEMBERSHIP: 0, EVENTS: 0}
    out = []

    def add(topic: str, value: dict[str, Any]) -> None:
        out.append(
            SimpleNamespace(
                topic=topic,
                partition=0,
                offset=offsets[topic],
                key=ROOM.encode(),
                value=orjson.dumps(value),
                timestamp=len(out),
            )
        )
        offsets[topic] += 1

    for pos, user in enumerate(USERS, 1):
        add(MEMBERSHIP, {"room_id": ROOM, "user_id": user, "membership": "join", "stream_pos": pos})
    for i in range(1, 6):
        add(
            EVENTS,
            {
                "room_id": ROOM,
                "event_id": f"$e{i}",
                "sender": "@a:hs1",
                "stream_pos": 10 + i,
                "origin_server_ts": 1_700_000_000_000 + i,
            },
        )
    for ts, (user, event) in enumerate(receipts, 1):
        receipt = {"room_id": ROOM, "user_id": USERS[user], "receipt_type": "m.read"}
        add(CLIENT, {**receipt, "event_id": f"$e{event}", "ts": ts})
    return out


def reference(records: list[Any]) -> dict[str, dict[bytes, bytes]]:
    """The stores after folding `records` one by one, over dicts."""
    stores: dict[str, dict[bytes, bytes]] = {"receipts": {}, "room_state": {}, "held": {}}
    processor = Processor(stores["receipts"], stores["room_state"], stores["held"], S_LIMITS)
    router = Router(processor, S)
    for record in records:
        effects = router.handle(record, 0)
        for removal in router.carry_out(effects, "client", [], Tally()):
            processor.held.remove(removal.key, removal.records)
    return stores


S_LIMITS = FoldEngine(S, backend=lambda table, p: MemoryStore()).limits


async def split(batch: list[Any], poison: set[str]) -> tuple[FoldEngine, RefusingSink]:
    engine = FoldEngine(S, backend=lambda table, p: MemoryStore())
    engine.consumer = NoConsumer()  # type: ignore[assignment]
    sink = RefusingSink(poison)
    task = engine.tasks[0] = PartitionTask(0, engine.backend, engine.limits, S, sink)  # type: ignore[arg-type]
    task.fold(batch, 0, Tally())
    sealed = task.seal()
    assert sealed is not None
    try:
        await Checkpoint([(task, sealed)], engine.committed).commit(None)
    except BatchFailed as failed:
        assert failed.on_contents()
        await engine._recover(failed.failures)
    return engine, sink


@settings(max_examples=60, deadline=None)
@given(
    receipts=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), max_size=30),
    poison=st.sets(st.sampled_from(USERS), max_size=3),
)
def test_the_poisoned_records_are_parked_and_the_stores_are_the_others_folded(
    receipts: list[tuple[int, int]], poison: set[str]
) -> None:
    ParkedLog.clear()
    batch = records(receipts)
    engine, sink = asyncio.run(split(batch, poison))
    bad = [r for r in batch if any(u.encode() in r.value for u in poison)]
    good = [r for r in batch if r not in bad]

    task = engine.tasks[0]
    expected = reference(good)
    for table, store in task.stores.items():
        assert isinstance(store, MemoryStore)
        assert store.data == expected[table], table
    parked = [orjson.loads(v) for t, _, v, _ in sink.outputs if t == DLQ]
    assert [(p["topic"], p["offset"]) for p in parked] == [(r.topic, r.offset) for r in bad]
    assert all(p["error"]["code"] == "unproducible" for p in parked)
    assert ParkedLog.total == len(bad)
    last = {TopicPartition(r.topic, 0): r.offset + 1 for r in batch}
    assert sink.offsets == last == {tp: engine.committed[tp] for tp in last}
    assert (sink.resets == 0) == (not bad)


def test_a_clean_batch_is_committed_whole() -> None:
    batch = records([(0, 1), (1, 2)])
    engine, sink = asyncio.run(split(batch, set()))
    assert not [o for o in sink.outputs if o[0] == DLQ] and sink.resets == 0
    assert engine.tasks[0].stores["receipts"].data == reference(batch)["receipts"]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _clear_parked() -> Any:
    yield
    ParkedLog.clear()
