"""Topic provisioning: every topic the worker touches exists, with the right partitions.

Created explicitly (never by broker auto-create, which would give one partition and no
compaction). A co-partitioned topic with the wrong partition count is a hard error: table
writes follow the input's partition, so a mismatch would scatter a room's state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from receipt_streams.config import Settings

log = logging.getLogger(__name__)

COMPACT = {"cleanup.policy": "compact"}
HISTORY = {"cleanup.policy": "delete"}  # append-only, by time


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    co_partitioned: bool = True


class TopicLayoutError(RuntimeError):
    """An existing topic does not have the partition count the worker needs."""


def topic_specs(s: Settings) -> list[TopicSpec]:
    n = s.partitions
    hour = {"retention.ms": str(3_600_000)}
    return [
        TopicSpec(s.topic_client, n),
        TopicSpec(s.topic_membership, n),
        TopicSpec(s.topic_events, n),
        TopicSpec(s.topic_federation, n, co_partitioned=False),
        TopicSpec(s.topic_ticks, n, hour),
        # Compacted: the last command per room or user stays, so an export can always tell
        # which history records a purge or an erasure removed (README, Analytics).
        TopicSpec(s.topic_admin, n, COMPACT),
        TopicSpec(s.topic_federation_in, n),
        TopicSpec(s.topic_outbox, n, co_partitioned=False),
        TopicSpec(s.topic_sync, n, co_partitioned=False),
        TopicSpec(s.topic_edus, n, co_partitioned=False),
        TopicSpec(s.topic_dlq, n, co_partitioned=False),
        # The feeds: co-partitioned by room (a room's records go where its inputs are).
        TopicSpec(s.topic_read_positions, n, COMPACT),
        TopicSpec(s.topic_history, n, HISTORY | {"retention.ms": str(s.history_retention_ms)}),
        TopicSpec(s.changelog_receipts, n, COMPACT),
        TopicSpec(s.changelog_state, n, COMPACT),
        TopicSpec(s.changelog_held, n, COMPACT),
    ]


async def ensure_topics(s: Settings) -> list[str]:
    """Create what is missing; check what exists. Returns the names created."""
    specs = topic_specs(s)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=s.bootstrap_servers, client_id=f"{s.app_id}-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in specs if t.name not in existing]
        created = []
        for spec in missing:
            try:
                new = NewTopic(
                    spec.name, spec.partitions, s.replication_factor, topic_configs=spec.config
                )
                await admin.create_topics([new])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        described = await admin.describe_topics([t.name for t in specs if t.co_partitioned])
        for topic in described:
            count = len(topic.get("partitions") or [])
            if topic.get("error_code", 0) == 0 and count not in (0, s.partitions):
                raise TopicLayoutError(
                    f"topic {topic['topic']!r} has {count} partitions, but "
                    f"RECEIPT_STREAMS_PARTITIONS={s.partitions}: co-partitioned topics must "
                    "all have the same count"
                )
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        await admin.close()
