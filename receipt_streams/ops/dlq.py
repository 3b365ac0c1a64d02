"""`ctl dlq`: list, count, show and re-drive DLQ records (CONTRACT section 3).

A DLQ record keeps the rejected input's raw key and value, so a record rejected for a cause
that has gone (a join or an event that arrived late) can be sent again to its source topic.
Re-drives are idempotent: each one is recorded on a compacted ledger topic,
`<app_id>-dlq-redriven`, keyed by the DLQ record's position, in the same Kafka transaction as
the re-sent record, and the ledger is read before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from receipt_streams.config import Settings
from receipt_streams.ops import kafka
from receipt_streams.ops.output import CtlError
from receipt_streams.ops.timespec import iso

REDRIVEN_FROM = "x-receipt-streams-redriven-from"
DLQ_REASON = "x-receipt-streams-dlq-reason"
ORIGINAL = "x-receipt-streams-original"
_BASE = frozenset(("topic", "partition", "offset", "key", "value", "error", "ts"))


def ledger_topic(s: Settings) -> str:
    return f"{s.app_id}-dlq-redriven"


@dataclass
class Entry:
    """One DLQ record: its own position and the record it carries (every field kept)."""

    partition: int
    offset: int
    timestamp: int  # the DLQ record's Kafka timestamp (ms)
    record: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # not a DLQ record we can read

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        error = self.record.get("error")
        return str(error.get("code")) if isinstance(error, dict) else "?"

    @property
    def ts(self) -> int:
        ts = self.record.get("ts")
        return ts if isinstance(ts, int) else self.timestamp

    @property
    def source_topic(self) -> str | None:
        topic = self.record.get("topic")
        return topic if isinstance(topic, str) else None


def decode(partition: int, offset: int, timestamp: int, value: bytes | None) -> Entry:
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return Entry(partition, offset, timestamp, {}, f"not JSON: {exc}")
    if not isinstance(record, dict):
        return Entry(partition, offset, timestamp, {}, "not a JSON object")
    return Entry(partition, offset, timestamp, record)


def parse_id(text: str) -> tuple[int, int]:
    """`PARTITION:OFFSET` of the DLQ topic (also accepted: `TOPIC:PARTITION:OFFSET`)."""
    parts = text.strip().split(":")
    try:
        return int(parts[-2]), int(parts[-1])
    except (IndexError, ValueError):
        raise CtlError(
            f"{text!r} is not a DLQ record id", "use PARTITION:OFFSET, as `dlq list` shows it"
        ) from None


def raw(entry: Entry, name: str) -> bytes | None:
    """The raw bytes of `key` or `value`, decoded from text or base64."""
    text = entry.record.get(name)
    if text is None:
        return None
    if entry.record.get(f"{name}_encoding") == "base64":
        try:
            return base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError):
            return None
    return str(text).encode("utf-8")


def truncation(entry: Entry) -> str | None:
    """Why the kept bytes are not the whole record, or None. Tolerant of how the DLQ names
    it: a `truncated`/`value_truncated`/`key_truncated` flag, or an original size (any
    `*size*` field of the record or of a nested `truncation` object) larger than the bytes kept."""
    rec = entry.record
    for flag in ("truncated", "value_truncated", "key_truncated"):
        if rec.get(flag) is True:
            return f"the DLQ record says {flag}"
    nested = rec.get("truncation") if isinstance(rec.get("truncation"), dict) else {}
    if nested and nested.get("truncated", True) is True:
        return "the DLQ record has a truncation block"
    value = raw(entry, "value")
    kept = len(value) if value is not None else 0
    for name in ("value_size", "original_size", "value_original_size", "size", "value_bytes"):
        size = rec.get(name, nested.get(name))
        if isinstance(size, int) and size > kept:
            return f"{name}={size} but only {kept} bytes are kept"
    if value is None and rec.get("value") is not None:
        return "the value cannot be decoded from its encoding"
    return None


@dataclass(frozen=True)
class Filters:
    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    source_topics: frozenset[str] = frozenset()
    ids: frozenset[tuple[int, int]] = frozenset()

    @property
    def empty(self) -> bool:
        return not (
            self.reasons or self.source_topics or self.ids or self.since_ms or self.until_ms
        )

    def match(self, e: Entry) -> bool:
        if self.ids and (e.partition, e.offset) not in self.ids:
            return False
        if self.reasons and e.reason not in self.reasons:
            return False
        if self.source_topics and e.source_topic not in self.source_topics:
            return False
        if self.since_ms is not None and e.ts < self.since_ms:
            return False
        return self.until_ms is None or e.ts < self.until_ms


def counts(entries: Iterable[Entry]) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    by_hour: Counter[str] = Counter()
    total = 0
    for e in entries:
        total += 1
        by_reason[e.reason] += 1
        by_hour[datetime.fromtimestamp(e.ts / 1000, UTC).strftime("%Y-%m-%dT%H:00Z")] += 1
    return {
        "total": total,
        "by_reason": dict(by_reason.most_common()),
        "by_hour": dict(sorted(by_hour.items())),
    }


def summary_row(e: Entry) -> dict[str, Any]:
    error = e.record.get("error") if isinstance(e.record.get("error"), dict) else {}
    return {
        "id": e.id,
        "time": iso(e.ts),
        "reason": e.reason,
        "source": f"{e.source_topic}:{e.record.get('partition')}:{e.record.get('offset')}",
        "key": e.record.get("key"),
        "message": (error or {}).get("message"),
        "truncated": truncation(e) is not None,
    }


def shown(e: Entry) -> dict[str, Any]:
    """The whole record, every field present (known or not), with the raw value decoded:
    as JSON when it parses, else as text, else base64."""
    out: dict[str, Any] = {"id": e.id, "time": iso(e.ts), "reason": e.reason, **e.record}
    if e.problem:
        out["problem"] = e.problem
    value = raw(e, "value")
    if value is not None:
        try:
            out["value_decoded"] = orjson.loads(value)
        except orjson.JSONDecodeError:
            try:
                out["value_decoded"] = value.decode("utf-8")
            except UnicodeDecodeError:
                out["value_decoded"] = {"base64": base64.b64encode(value).decode()}
        out["value_sha256"] = hashlib.sha256(value).hexdigest()
    out["extra_fields"] = sorted(set(e.record) - _BASE - {"key_encoding", "value_encoding"})
    out["truncation"] = truncation(e)
    return out


# --- re-drive --------------------------------------------------------------------------


def ledger_key(s: Settings, e: Entry) -> bytes:
    return f"{s.topic_dlq}:{e.partition}:{e.offset}".encode()


@dataclass
class Decision:
    entry: Entry
    send: bool
    why: str


def plan_redrive(s: Settings, selected: list[Entry], done: set[bytes]) -> list[Decision]:
    """What a re-drive does with each selected record: send it, or say why not."""
    out = []
    for e in selected:
        if ledger_key(s, e) in done:
            out.append(Decision(e, False, "already re-driven"))
        elif e.problem or not e.source_topic:
            out.append(Decision(e, False, f"unreadable DLQ record: {e.problem or 'no topic'}"))
        elif isinstance(output := e.record.get("output"), dict):
            out.append(
                Decision(
                    e,
                    False,
                    f"an output to {output.get('topic')} that could not be produced, not an "
                    f"input: its input is on {e.source_topic} partition "
                    f"{e.record.get('partition')} offset {e.record.get('offset')}",
                )
            )
        elif why := truncation(e):
            out.append(
                Decision(
                    e,
                    False,
                    f"truncated ({why}): nothing to re-drive faithfully; the original may "
                    f"still be on {e.source_topic} partition {e.record.get('partition')} "
                    f"offset {e.record.get('offset')}",
                )
            )
        else:
            out.append(Decision(e, True, f"to {e.source_topic}"))
    return out


def headers(s: Settings, e: Entry) -> list[tuple[str, bytes]]:
    return [
        (REDRIVEN_FROM, f"{s.topic_dlq}:{e.partition}:{e.offset}".encode()),
        (DLQ_REASON, e.reason.encode()),
        (
            ORIGINAL,
            f"{e.source_topic}:{e.record.get('partition')}:{e.record.get('offset')}".encode(),
        ),
    ]


async def read_entries(s: Settings, quiet: bool = False) -> list[Entry]:
    entries = []
    async with kafka.started(kafka.consumer(s)) as c:
        tps = await kafka.topic_partitions(c, [s.topic_dlq])
        async for r in kafka.read_records(c, tps, f"reading {s.topic_dlq}", quiet):
            entries.append(decode(r.partition, r.offset, r.timestamp, r.value))
    return entries


async def read_one(s: Settings, partition: int, offset: int) -> Entry:
    async with kafka.started(kafka.consumer(s)) as c:
        await kafka.partitions(c, s.topic_dlq)
        tp = TopicPartition(s.topic_dlq, partition)
        c.assign([tp])
        begin, end = (await c.beginning_offsets([tp]))[tp], (await c.end_offsets([tp]))[tp]
        if not begin <= offset < end:
            raise CtlError(
                f"no record {partition}:{offset} on {s.topic_dlq} "
                + (
                    f"(it holds {begin}..{end - 1})" if end > begin else "(that partition is empty)"
                ),
                "take an id from `receipt-streams ctl dlq list`",
            )
        c.seek(tp, offset)
        r = await c.getone()
        if r.offset != offset:
            raise CtlError(f"record {partition}:{offset} is gone (compacted or aborted)")
        return decode(r.partition, r.offset, r.timestamp, r.value)


async def read_done(s: Settings, quiet: bool = False) -> dict[bytes, dict[str, Any]]:
    await kafka.ensure_compacted_topic(s, ledger_topic(s))
    table = await kafka.read_table(s, ledger_topic(s), quiet)
    return {k: orjson.loads(v) for k, v in table.items()}


async def redrive(s: Settings, decisions: list[Decision], quiet: bool = False) -> list[dict]:
    """Send each chosen record in a transaction with its ledger entry: both or neither."""
    from receipt_streams.ops.output import progress

    producer = AIOKafkaProducer(
        bootstrap_servers=s.bootstrap_servers,
        transactional_id=f"{s.app_id}-ctl-dlq-redrive",  # also fences a concurrent re-drive
        enable_idempotence=True,
        acks="all",
    )
    sent = []
    chosen = [d for d in decisions if d.send]
    async with kafka.started(producer):
        bar = progress(len(chosen), "re-driving", quiet)
        for d in chosen:
            e = d.entry
            assert e.source_topic is not None
            async with producer.transaction():
                meta = await producer.send_and_wait(
                    e.source_topic, raw(e, "value"), key=raw(e, "key"), headers=headers(s, e)
                )
                note = {
                    "redriven_at": iso(int(datetime.now(UTC).timestamp() * 1000)),
                    "to": f"{meta.topic}:{meta.partition}:{meta.offset}",
                    "reason": e.reason,
                }
                await producer.send_and_wait(
                    ledger_topic(s), orjson.dumps(note), key=ledger_key(s, e)
                )
            sent.append({"id": e.id, **note})
            bar.update(1)
        bar.close()
    return sent
