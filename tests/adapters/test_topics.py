"""Topic specs (no broker): the feeds are co-partitioned with the inputs; read positions are
compacted, the history kept by time, as configured; created topics are waited for until the
broker's metadata shows them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from receipt_streams.adapters.topics import TopicSpec, topic_specs, wait_until_visible
from receipt_streams.config import Settings


def test_feed_topics() -> None:
    s = Settings(partitions=6, history_retention_ms=86_400_000)
    specs = {t.name: t for t in topic_specs(s)}
    positions, history = specs[s.topic_read_positions], specs[s.topic_history]
    assert (positions.partitions, positions.co_partitioned) == (6, True)
    assert positions.config == {"cleanup.policy": "compact"}
    assert (history.partitions, history.co_partitioned) == (6, True)
    assert history.config == {"cleanup.policy": "delete", "retention.ms": "86400000"}
    forever = {t.name: t for t in topic_specs(Settings(history_retention_ms=-1))}
    assert forever[s.topic_history].config["retention.ms"] == "-1"


class Metadata:
    """An admin client whose metadata shows a topic's partitions one answer at a time."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.answers = 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        shown = min(self.answers, self.partitions)
        self.answers += 1
        parts = [{"partition": p, "leader": 1} for p in range(shown)]
        return [{"topic": n, "error_code": 0 if shown else 3, "partitions": parts} for n in names]


def test_created_topics_are_waited_for_until_every_partition_has_a_leader() -> None:
    admin = Metadata(partitions=4)
    asyncio.run(wait_until_visible(admin, [TopicSpec("t", 4)], every_s=0))
    assert admin.answers == 5  # none shown, then 1, 2, 3, then all 4


def test_topics_not_shown_in_time_are_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = Metadata(partitions=0)
    with caplog.at_level(logging.WARNING):
        asyncio.run(wait_until_visible(admin, [TopicSpec("t", 4)], timeout_s=0.05, every_s=0.01))
    (record,) = caplog.records
    assert record.topics == ["t"]
