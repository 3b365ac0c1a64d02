"""A relay that fails is restarted with nothing of the failed run left: a rebalance can assign
partitions while the failed run's consumer is stopping, and their sinks used to survive into
the next run, whose `assign` then created no state for them (never read again)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from receipt_streams.adapters import transactions
from receipt_streams.adapters.effects import Output
from receipt_streams.adapters.relays import base
from receipt_streams.adapters.relays.base import Relay
from receipt_streams.adapters.transactions import Fenced
from tests.support.worker import worker_settings

TP0 = TopicPartition("changelog", 0)


class NullRelay(Relay[list[Any]]):
    name = "null-relay"

    def new_state(self) -> list[Any]:
        return []

    def absorb(self, state: list[Any], tp: TopicPartition, records: Sequence[Any]) -> None:
        state.extend(records)

    def drain(self, state: list[Any], now: int) -> list[Output]:
        return []

    def position(self, state: list[Any], consumed: int) -> int | None:
        return None


class StoppingConsumer:
    """Fails the first poll (as a fenced publish does); while stopping, the group's pending
    rebalance completes and assigns a partition (aiokafka runs the listener then)."""

    def __init__(self) -> None:
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        return None

    async def getmany(self, timeout_ms: int = 0) -> dict[Any, Any]:
        raise Fenced("fenced by a newer owner")

    async def stop(self) -> None:
        await self.listener.on_partitions_assigned([TP0])

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0


class NullProducer:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_a_failed_run_leaves_no_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = worker_settings("127.0.0.1:9", tmp_path, processing_guarantee="at_least_once")
    monkeypatch.setattr(base, "read_committed", lambda *a, **k: StoppingConsumer())
    monkeypatch.setattr(transactions, "producer", lambda *a, **k: NullProducer())
    relay = NullRelay(s, "changelog", 50)
    with pytest.raises(Fenced):
        await relay.run()
    assert relay.sinks == {} and relay.states == {}
    # The next run's assignment of the same partition gives it a state again.
    relay.consumer = StoppingConsumer()
    await relay.assign([TP0])
    assert TP0 in relay.states
