"""The Kafka I/O ctl needs, in small functions. Every reader uses read_committed: outputs and
changelogs are written in transactions, and an aborted write must never show up here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import TopicAlreadyExistsError

from receipt_streams.config import Settings
from receipt_streams.ops.output import CtlError, progress


def consumer(s: Settings, **kw: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        client_id=f"{s.app_id}-ctl",
        **kw,
    )


@contextlib.asynccontextmanager
async def started(c: Any) -> AsyncIterator[Any]:
    try:
        await c.start()
    except Exception as exc:
        await _quietly(c)
        raise CtlError(
            f"cannot reach Kafka at {getattr(c, '_bootstrap_servers', '?')}: {exc!r}",
            "set KAFKA_BOOTSTRAP_SERVERS (or RECEIPT_STREAMS_BOOTSTRAP_SERVERS) to the cluster",
        ) from exc
    await asyncio.sleep(0)  # let the client's tasks start: one cancelled unstarted breaks stop()
    try:
        yield c
    finally:
        await _quietly(c)


async def _quietly(c: Any) -> None:
    with contextlib.suppress(Exception):
        await (c.stop() if hasattr(c, "stop") else c.close())


def admin(s: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, client_id=f"{s.app_id}-ctl")


async def partitions(c: AIOKafkaConsumer, topic: str, required: bool = True) -> list[int]:
    """The topic's partitions (metadata refreshed a few times: a new client may not know it)."""
    for _ in range(20):
        found = c.partitions_for_topic(topic)
        if found:
            return sorted(found)
        await c._client.force_metadata_update()
        await asyncio.sleep(0.05)
    if required:
        raise CtlError(
            f"topic {topic!r} does not exist",
            "check RECEIPT_STREAMS_APP_ID and the topic settings (they must be the workers')",
        )
    return []


async def topic_partitions(c: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topics for p in await partitions(c, t)]


async def read_records(
    c: AIOKafkaConsumer,
    tps: list[TopicPartition],
    what: str,
    quiet: bool = False,
    starts: dict[TopicPartition, int] | None = None,
) -> AsyncIterator[Any]:
    """Every committed record of `tps` from the beginning (or from `starts`) to the end seen
    at the start, with a progress bar."""
    if not tps:
        return
    c.assign(tps)
    begin = starts if starts is not None else await c.beginning_offsets(tps)
    end = await c.end_offsets(tps)
    remaining = {tp for tp in tps if end[tp] > begin[tp]}
    for tp in remaining:
        c.seek(tp, begin[tp])
    bar = progress(sum(end[tp] - begin[tp] for tp in remaining), what, quiet)
    try:
        while remaining:
            got = await c.getmany(*remaining, timeout_ms=500)
            for tp, records in got.items():
                for r in records:
                    if r.offset < end[tp]:
                        yield r
                bar.update(len(records))
            for tp in list(remaining):  # the end may be a control record or compacted away
                if await c.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        bar.close()


async def read_table(s: Settings, topic: str, quiet: bool = False) -> dict[bytes, bytes]:
    """A compacted changelog as a table: the last value per key, tombstones delete."""
    table: dict[bytes, bytes] = {}
    async with started(consumer(s)) as c:
        tps = await topic_partitions(c, [topic])
        async for r in read_records(c, tps, f"reading {topic}", quiet):
            if r.key is None:
                continue
            if r.value is None:
                table.pop(r.key, None)
            else:
                table[r.key] = r.value
    return table


async def offsets(
    s: Settings, tps: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(beginning, end) offsets; the end is the last stable offset (read_committed)."""
    if not tps:
        return {}, {}
    async with started(consumer(s)) as c:
        return await c.beginning_offsets(tps), await c.end_offsets(tps)


@dataclass
class Member:
    member_id: str
    client_id: str
    host: str
    assignment: list[TopicPartition] = field(default_factory=list)


@dataclass
class Group:
    group_id: str
    state: str
    members: list[Member]
    committed: dict[TopicPartition, int]


def parse_group(raw: Any) -> Group:
    """One group of a DescribeGroups response (a tuple per the protocol schema)."""
    _error, group_id, state, _ptype, _protocol, members = raw[:6]
    parsed = []
    for member in members:
        member_id, client_id, host, _metadata, assignment = member[:5]
        tps: list[TopicPartition] = []
        if assignment:
            tps = ConsumerProtocolMemberAssignment.decode(assignment).partitions()
        parsed.append(Member(member_id, client_id, host.lstrip("/"), sorted(tps)))
    return Group(group_id, state, parsed, {})


async def describe_groups(s: Settings, group_ids: list[str]) -> dict[str, Group]:
    out: dict[str, Group] = {}
    async with started(admin(s)) as a:
        for group_id in group_ids:
            (response,) = await a.describe_consumer_groups([group_id])
            group = parse_group(response.groups[0])
            committed = await a.list_consumer_group_offsets(group_id)
            group.committed = {tp: m.offset for tp, m in committed.items() if m.offset >= 0}
            out[group_id] = group
    return out


async def ensure_compacted_topic(s: Settings, name: str) -> None:
    async with started(admin(s)) as a:
        if name in set(await a.list_topics()):
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            await a.create_topics(
                [
                    NewTopic(
                        name, 1, s.replication_factor, topic_configs={"cleanup.policy": "compact"}
                    )
                ]
            )


async def records_between(
    c: AIOKafkaConsumer, committed: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> bool:
    """Whether a committed record lies between a group's commit and `ends`. Not a bare
    comparison: a transactional topic ends with a commit marker that no consumer commits."""
    behind = {tp: committed.get(tp, 0) for tp, end in ends.items() if committed.get(tp, 0) < end}
    if not behind:
        return False
    c.assign(list(behind))
    for tp, at in behind.items():
        c.seek(tp, at)
    deadline = asyncio.get_running_loop().time() + 2
    pending = set(behind)
    while pending and asyncio.get_running_loop().time() < deadline:
        got = await c.getmany(*pending, timeout_ms=200)
        for tp, records in got.items():
            if any(r.offset < ends[tp] for r in records):
                return True
        for tp in list(pending):
            if await c.position(tp) >= ends[tp]:
                pending.discard(tp)
    return bool(pending)
