"""Outbox -> `m.receipt` EDUs per destination, coalesced, big rooms paced.

Each outbox partition has its own queue, published by its own (fenced) producer: a
destination gets at most one EDU per partition per window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.effects import Output
from receipt_streams.adapters.relays.base import Relay
from receipt_streams.config import Settings
from receipt_streams.core.federation import OutboundQueue

log = logging.getLogger(__name__)


class EduQueue:
    """One outbox partition's pending entries."""

    def __init__(self, queue: OutboundQueue) -> None:
        self.queue = queue


class EduRelay(Relay[EduQueue]):
    name = "federation-edus"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.topic_outbox, settings.edu_window_ms)

    def new_state(self) -> EduQueue:
        s = self.s
        return EduQueue(
            OutboundQueue(s.server_name, s.large_room_servers, s.large_room_interval_ms)
        )

    def absorb(self, state: EduQueue, tp: TopicPartition, records: Sequence[Any]) -> None:
        for m in records:
            try:
                state.queue.add(orjson.loads(m.value), m.offset)
            except (ValueError, KeyError, TypeError):
                log.exception(
                    "unreadable outbox record skipped (a bug: please report it with the "
                    "record at this offset)",
                    extra={"partition": tp.partition, "offset": m.offset},
                )

    def drain(self, state: EduQueue, now: int) -> list[Output]:
        edus = state.queue.flush(now)
        metrics.EDUS.inc(len(edus))
        return [(self.s.topic_edus, e["destination"].encode(), orjson.dumps(e), None) for e in edus]

    def position(self, state: EduQueue, consumed: int) -> int | None:
        """Up to the oldest record with an entry still pending (paced)."""
        pending = state.queue.pending_sources()
        return min(pending) if pending else consumed

    def idle_poll_ms(self) -> int:
        if any(state.queue.pending for state in self.states.values()):
            return self.s.large_room_interval_ms
        return 500
