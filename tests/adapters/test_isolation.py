"""Splitting a failed batch (issue 12): for any batch and any records at fault, exactly those
are parked, and every other record is processed once, in order; and only failures a record
can cause lead to splitting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownError,
)
from hypothesis import given
from hypothesis import strategies as st

from receipt_streams.adapters.effects import guarded, limits_of
from receipt_streams.adapters.engine.checkpoint import BatchFailed
from receipt_streams.adapters.engine.stores import RocksStore, StoreFailed
from receipt_streams.adapters.isolation import NotTheRecords, caused_by_contents, isolate
from receipt_streams.adapters.relays.deltas import DeltaRelay
from receipt_streams.adapters.transactions import Fenced
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.processor import Processor


def run_isolation(n: int, poison: set[int]) -> tuple[list[int], list[int], int]:
    """(processed, parked, attempts) for a batch 0..n-1 where any part holding a poison
    position fails (as a batch whose output the broker refuses does)."""
    processed: list[int] = []
    parked: list[int] = []
    attempts = 0

    async def attempt(part: Sequence[int]) -> BaseException | None:
        nonlocal attempts
        attempts += 1
        if poison.intersection(part):
            return MessageSizeTooLargeError()
        processed.extend(part)
        return None

    async def park(item: int, exc: BaseException) -> None:
        assert isinstance(exc, MessageSizeTooLargeError)
        parked.append(item)

    returned = asyncio.run(isolate(list(range(n)), attempt, park))
    assert returned == parked
    return processed, parked, attempts


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n)))))
def test_exactly_the_poison_is_parked_and_the_rest_processed_once_in_order(
    case: tuple[int, set[int]],
) -> None:
    n, positions = case
    poison = {p for p in positions if p < n}
    processed, parked, _ = run_isolation(n, poison)
    assert parked == sorted(poison)
    assert processed == [i for i in range(n) if i not in poison]


def test_one_poison_in_a_large_batch_takes_few_attempts() -> None:
    _, parked, attempts = run_isolation(5000, {3141})
    assert parked == [3141]
    assert attempts <= 2 * 13 + 1  # two per halving, plus the whole batch


def test_an_error_the_attempt_raises_stops_the_isolation() -> None:
    async def attempt(part: Sequence[int]) -> BaseException | None:
        raise KafkaConnectionError()

    async def park(item: int, exc: BaseException) -> None:
        raise AssertionError("nothing is parked on a transient failure")

    with pytest.raises(KafkaConnectionError):
        asyncio.run(isolate([1, 2, 3], attempt, park))


@pytest.mark.parametrize(
    "exc",
    [
        MessageSizeTooLargeError(),
        RecordTooLargeError(),
        UnknownError(),  # e.g. INVALID_RECORD (87), unknown to aiokafka
        ValueError("a bug a record hits"),
        KeyError("x"),
    ],
)
def test_refused_data_and_processing_errors_are_split(exc: BaseException) -> None:
    assert caused_by_contents(exc)


@pytest.mark.parametrize(
    "exc",
    [
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        RequestTimedOutError(),
        KafkaTimeoutError(),
        OutOfOrderSequenceNumber(),
        ProducerFenced(),
        Fenced("another owner"),
        TopicAuthorizationFailedError(),
        TimeoutError(),
        ConnectionResetError(),
        MemoryError(),
        NotTheRecords("store write"),
        asyncio.CancelledError(),
    ],
)
def test_broker_network_fencing_and_producer_state_are_never_split(exc: BaseException) -> None:
    assert not caused_by_contents(exc)


class FakeSink:
    """Refuses a probe holding a poison output, or more than `limit` outputs at once (the
    broker refusing outputs packed together that it takes one by one)."""

    def __init__(self, poison: set[bytes], limit: int) -> None:
        self.poison, self.limit = poison, limit
        self.resets = 0
        self.published: list[tuple[list[list[Any]], dict[Any, int], bool]] = []

    async def probe(self, part: Sequence[Any]) -> None:
        if len(part) > self.limit or any(value in self.poison for _, _, value, _ in part):
            raise MessageSizeTooLargeError()

    async def reset(self) -> None:
        self.resets += 1

    async def publish(self, steps: Any, offsets: Any, apart: bool = False) -> dict[Any, int]:
        self.published.append(([list(step) for step in steps], offsets, apart))
        return {}


@pytest.mark.parametrize(("poison", "limit"), [({b"3"}, 100), (set(), 4), ({b"0", b"9"}, 3)])
def test_a_relay_parks_the_refused_outputs_and_publishes_the_rest_in_order(
    poison: set[bytes], limit: int
) -> None:
    s = Settings(topic_sync="sync", topic_dlq="dlq")
    relay = DeltaRelay(s)
    outputs: list[Any] = [("sync", b"!r", str(i).encode(), None) for i in range(10)]
    sink = FakeSink(poison, limit)
    origin = Source(s.changelog_receipts, 1, -1, None, None)
    offsets = {"tp": 42}
    asyncio.run(relay._park_refused(sink, origin, outputs, offsets, MessageSizeTooLargeError()))

    ((steps, committed, apart),) = sink.published
    assert committed == offsets and apart
    *parts, dlq = steps
    sent = [output for part in parts for output in part]
    assert sent == [o for o in outputs if o[2] not in poison]
    assert all(len(part) <= limit for part in parts)
    parked = [orjson.loads(value) for _, _, value, _ in dlq]
    assert [p["value"] for p in parked] == sorted(v.decode() for v in poison)
    assert all(p["output"] == {"topic": "sync"} and p["offset"] == -1 for p in parked)
    assert all(p["error"]["code"] == "unproducible" for p in parked)


def test_a_batch_is_split_only_when_every_failed_task_failed_on_its_contents() -> None:
    contents = BatchFailed({0: ([], MessageSizeTooLargeError()), 1: ([], ValueError("bug"))})
    assert contents.on_contents()
    mixed = BatchFailed({0: ([], MessageSizeTooLargeError()), 1: ([], KafkaConnectionError())})
    assert not mixed.on_contents() and isinstance(mixed.cause(), KafkaConnectionError)
    fenced = BatchFailed({0: ([], NotTheRecords("x")), 1: ([], Fenced("another owner"))})
    assert isinstance(fenced.cause(), Fenced)  # counted as fenced, and the loop rejoins


def test_a_store_that_cannot_be_read_is_not_the_records_fault(tmp_path: Any) -> None:
    """A RocksDB read error is raised as StoreFailed, past the per-record guard (no
    internal_error record) and past the split (the loop restarts instead)."""

    class Broken:
        def get(self, key: bytes) -> bytes:
            raise RuntimeError("IO error: No space left on device")

    store = RocksStore(tmp_path / "s")
    try:
        store.db.close()
        store.db = Broken()  # type: ignore[assignment]
        with pytest.raises(StoreFailed) as raised:
            store.get(b'["k"]')
        assert not caused_by_contents(raised.value)
        processor = Processor({}, {}, {}, limits_of(Settings()))

        def handler(src: Any, now: int) -> Any:
            raise raised.value

        record = SimpleNamespace(topic="t", partition=0, offset=1, key=None, value=b"{}")
        with pytest.raises(StoreFailed):
            guarded(processor, handler, record, 0)
    finally:
        store.db = None  # type: ignore[assignment]
