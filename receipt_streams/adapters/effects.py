"""What both fold engines do around the core: its limits from the settings, one record run
through a handler without letting a bug stop the stream, and the metrics of an effect."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from receipt_streams.adapters import metrics
from receipt_streams.config import Settings
from receipt_streams.core.dlq import DlqBounds, Source
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.processor import Effect, Folded, Held, Limits, Processor, SendDlq
from receipt_streams.core.reasons import Reason

log = logging.getLogger(__name__)


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
    )


def guarded(
    processor: Processor, handler: Callable[[Source, int], list[Effect]], msg: Any, now: int
) -> list[Effect]:
    """Run one record (anything with topic, partition, offset, key, value) through the core;
    a bug must not stop the stream: the record is parked in the DLQ as `internal_error`."""
    src = Source(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
    try:
        return handler(src, now)
    except Exception as exc:
        log.exception(
            "record failed",
            extra={"topic": msg.topic, "offset": msg.offset, "partition": msg.partition},
        )
        return [processor.reject(src, Rejection(Reason.INTERNAL_ERROR, repr(exc)), now)]


def count(effect: Effect, source: str) -> None:
    tally = Tally()
    tally.effect(effect, source)
    tally.flush()


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
        elif isinstance(effect, Held):
            self.counts[metrics.HELD, (effect.waiting_for,)] += 1

    def input(self, topic: str) -> None:
        self.counts[metrics.INPUTS, (topic,)] += 1

    def flush(self) -> None:
        for (metric, labels), n in self.counts.items():
            metrics.child(metric, *labels).inc(n)
        self.counts.clear()
