"""What both fold engines (and the core test harness) do around the core: its limits from the
settings, the one table of input topic -> handler, one record run through its handler without
letting a bug stop the stream, the one place effects become records, and their metrics."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from receipt_streams.adapters import metrics
from receipt_streams.adapters.compact import compact
from receipt_streams.adapters.isolation import NotTheRecords
from receipt_streams.adapters.parking import bounded
from receipt_streams.config import Settings
from receipt_streams.core.dlq import DlqBounds, Source
from receipt_streams.core.feeds import FeedOptions
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.processor import (
    FEDERATION_IN,
    FEDERATION_OUT,
    FEEDS,
    HISTORY,
    READ_POSITIONS,
    Effect,
    Emit,
    Folded,
    ForgetHeld,
    Limits,
    OverDlqBudget,
    Processor,
    PutOnHold,
    Removed,
    SendDlq,
)
from receipt_streams.core.reasons import Reason

log = logging.getLogger(__name__)

Handler = Callable[[Source, int], list[Effect]]
Output = tuple[str, bytes | None, bytes | None, int | None]  # topic, key, value, partition


def limits_of(s: Settings) -> Limits:
    return Limits(
        server_name=s.server_name,
        grace_ms=int(s.grace_period_s * 1000),
        max_record_bytes=s.max_record_bytes,
        held_per_dep=s.held_per_dep,
        held_key_bytes=s.held_max_bytes_per_key,
        held_partition_bytes=s.held_max_bytes_per_partition,
        dlq=DlqBounds(s.dlq_max_value_bytes, s.dlq_max_key_bytes),
        dlq_per_edu=s.dlq_max_per_edu,
        feeds=FeedOptions(
            read_positions=s.feed_read_positions,
            history=s.feed_history,
            history_private=s.history_include_private,
            history_fully_read=s.history_include_fully_read,
        ),
    )


def guarded(
    processor: Processor, handler: Callable[[Source, int], list[Effect]], msg: Any, now: int
) -> list[Effect]:
    """Run one record (anything with topic, partition, offset, key, value) through the core;
    a bug must not stop the stream: the record is parked in the DLQ as `internal_error`. A
    failure that is not the record's (a store that cannot be read) is raised: the loop
    restarts rather than send every record to the DLQ."""
    src = msg if isinstance(msg, Source) else Source.of(msg)
    try:
        return handler(src, now)
    except NotTheRecords:
        raise
    except Exception as exc:
        log.exception(
            "record failed",
            extra={"topic": msg.topic, "offset": msg.offset, "partition": msg.partition},
        )
        return [processor.reject(src, Rejection(Reason.INTERNAL_ERROR, repr(exc)), now)]


class Tally:
    """Metric increments gathered over a batch and added once: a Prometheus increment
    takes a lock, which a per-record hot path feels."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[Any, tuple[str, ...]]] = Counter()

    def effect(self, effect: Effect, source: str) -> None:
        if isinstance(effect, Folded):
            self.counts[metrics.RECEIPTS, (source, effect.outcome.value)] += 1
        elif isinstance(effect, SendDlq):
            self.counts[metrics.REJECTED, (str(effect.reason),)] += 1
        elif isinstance(effect, PutOnHold):
            self.counts[metrics.HELD, (effect.waiting_for,)] += 1
        elif isinstance(effect, Emit) and effect.stream in FEEDS:
            self.counts[metrics.FEED_RECORDS, (effect.stream,)] += 1
        elif isinstance(effect, Removed):
            self.counts[metrics.REMOVED, (effect.command,)] += effect.receipts
        elif isinstance(effect, OverDlqBudget):
            self.counts[metrics.REJECTED, (str(effect.reason),)] += 1
            self.counts[metrics.DLQ_OVER_BUDGET, (str(effect.reason),)] += 1

    def input(self, topic: str) -> None:
        self.counts[metrics.INPUTS, (topic,)] += 1

    def flush(self) -> None:
        for (metric, labels), n in self.counts.items():
            metrics.child(metric, *labels).inc(n)
        self.counts.clear()


class Router:
    """The one table of input topic -> core handler, and the one place where effects become
    output records. The engines only decide when records go out and when held receipts are
    forgotten (the `ForgetHeld`s returned by `carry_out`)."""

    def __init__(self, processor: Processor, s: Settings) -> None:
        self.processor = processor
        self.s = s
        self.dlq = s.topic_dlq
        self.federation_topics = {s.topic_federation_in, s.topic_federation}
        self.streams = {
            FEDERATION_IN: s.topic_federation_in,
            FEDERATION_OUT: s.topic_outbox,
            READ_POSITIONS: s.topic_read_positions,
            HISTORY: s.topic_history,
        }
        self.handlers: dict[str, Handler] = {
            s.topic_client: processor.client_receipt,
            s.topic_membership: processor.membership,
            s.topic_events: processor.room_event,
            s.topic_federation_in: processor.remote_receipt,
            s.topic_federation: processor.federation_edu,
            s.topic_ticks: lambda src, now: processor.tick(src.partition, now),
            s.topic_admin: processor.admin,
        }

    def handle(self, record: Any, now: int) -> list[Effect]:
        """Run one input record (a `Source`, or anything with topic, partition, offset, key,
        value)."""
        return guarded(self.processor, self.handlers[record.topic], record, now)

    def source_of(self, topic: str) -> str:
        """The metrics' source label of a record of `topic`."""
        return "federation" if topic in self.federation_topics else "client"

    def carry_out(
        self,
        effects: list[Effect],
        source: str,
        outputs: list[Output],
        tally: Tally,
        origin: Source | None = None,
    ) -> list[ForgetHeld]:
        """Append the records `effects` ask for to `outputs`; count them; return the held
        receipts to forget once those records are durable. `origin` is the input record: the
        feeds go to its partition (co-partitioned by room, like the changelogs), and an output
        over the producer's limit becomes a DLQ record instead (the core keeps its outputs far
        smaller: this is defence in depth)."""
        partition = origin.partition if origin is not None else None
        removals: list[ForgetHeld] = []
        for effect in effects:
            tally.effect(effect, source)
            # Outputs wait in the batch until it is published: kept compact (a DLQ record's
            # value is built by the core already in one piece).
            if isinstance(effect, SendDlq):
                outputs.append((self.dlq, effect.topic.encode(), effect.record, None))
            elif isinstance(effect, Emit):
                to = partition if effect.stream in FEEDS else None
                value = compact(effect.value) if effect.value is not None else None
                out = (self.streams[effect.stream], compact(effect.key), value, to)
                outputs.append(out if origin is None else bounded(self.s, out, origin))
            elif isinstance(effect, ForgetHeld):
                removals.append(effect)
            elif isinstance(effect, Removed):
                log.info("admin command applied", extra=effect.summary())
        return removals
