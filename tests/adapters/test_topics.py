"""Topic specs (no broker): the feeds are co-partitioned with the inputs; read positions are
compacted, the history kept by time, as configured."""

from __future__ import annotations

from receipt_streams.adapters.topics import topic_specs
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
