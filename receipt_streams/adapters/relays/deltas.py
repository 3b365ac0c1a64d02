"""Receipts changelog -> one sync delta per room per window (`seq` = changelog offset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.effects import Output
from receipt_streams.adapters.relays.base import Relay
from receipt_streams.config import Settings
from receipt_streams.core.deltas import plan_deltas


class Window:
    """One changelog partition's records of the window."""

    def __init__(self) -> None:
        self.records: list[Any] = []


class DeltaRelay(Relay[Window]):
    name = "sync-deltas"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.changelog_receipts, settings.batch_window_ms)

    def new_state(self) -> Window:
        return Window()

    def absorb(self, state: Window, tp: TopicPartition, records: Sequence[Any]) -> None:
        state.records.extend(records)

    def drain(self, state: Window, now: int) -> list[Output]:
        records = state.records
        if not records:
            return []
        metrics.DELTA_BATCH.observe(len(records))
        outputs: list[Output] = [
            (self.s.topic_sync, delta["room_id"].encode(), orjson.dumps(delta), None)
            for delta in plan_deltas(((m.offset, m.key, m.value) for m in records), now)
        ]
        state.records = []
        metrics.DELTAS.inc(len(outputs))
        return outputs

    def position(self, state: Window, consumed: int) -> int | None:
        return None if state.records else consumed
