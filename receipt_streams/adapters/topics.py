"""Topic provisioning: every topic the worker touches exists, with the right partitions.

Created explicitly (never by broker auto-create, which would give one partition and no
compaction). A co-partitioned topic with the wrong partition count is a hard error: table
writes follow the input's partition, so a mismatch would scatter a room's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from receipt_streams.config import Settings

log = logging.getLogger(__name__)

#: How long `ensure_topics` waits for topics it created to show in the broker's metadata.
VISIBLE_S = 30.0

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
            await wait_until_visible(admin, [t for t in specs if t.name in created])
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        await admin.close()


async def wait_until_visible(
    admin: Any, specs: list[TopicSpec], timeout_s: float = VISIBLE_S, every_s: float = 0.2
) -> None:
    """Wait until every created topic's partitions have a leader in the broker's metadata.

    A broker answers CreateTopics before its metadata shows the topic everywhere (seconds on
    a loaded one): a Faust worker joining its group then is assigned nothing for the topics
    it does not see yet ("Ignoring missing topic") and reads nothing until its next metadata
    refresh, minutes later. Past `timeout_s`, a warning names what is missing."""
    want = {t.name: t.partitions for t in specs}
    deadline = time.monotonic() + timeout_s
    while True:
        missing = dict(want)
        for topic in await admin.describe_topics(list(want)):
            parts = topic.get("partitions") or []
            led = [p for p in parts if p.get("leader", -1) >= 0]
            if topic.get("error_code", 0) == 0 and len(led) >= want.get(topic["topic"], 0):
                missing.pop(topic["topic"], None)
        if not missing:
            return
        if time.monotonic() >= deadline:
            log.warning(
                "created topics not in the broker's metadata yet; going on",
                extra={"topics": sorted(missing), "waited_s": timeout_s},
            )
            return
        await asyncio.sleep(every_s)
