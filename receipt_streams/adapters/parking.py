"""Parking: what an engine sends to the DLQ so that the stream goes on (issue 12).

Two kinds of record are parked, each as a bounded DLQ record (`core/dlq.py`):

- an input record that a batch could not get past (found by `isolation.isolate`): the record
  itself, with the reason `unproducible` (the broker refused what it produced) or
  `poison_batch` (processing it failed);
- an output that cannot be produced: over `producer_max_request_bytes` before it is sent, or
  refused by the broker on its own (a relay's); its key and value, `output.topic` where it
  was to go, and the input it came from, with the reason `unproducible`.

Every parked record is counted (`receipt_streams_parked_total`) and remembered here for
the admin listener's `/readyz`, which shows them without turning 503: parking is how the
stream recovers. (An output over the limit is counted when it is replaced: should its batch
fail for another reason and be folded again, it is counted again.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from receipt_streams.adapters import metrics
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.isolation import REFUSED_DATA
from receipt_streams.config import Settings
from receipt_streams.core.dlq import DlqBounds, Source, dlq_record
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason

log = logging.getLogger(__name__)

Output = tuple[str, bytes | None, bytes | None, int | None]  # as effects.Output
RECENT_S = 900.0  # /readyz counts the records parked in the last 15 minutes ...
RECENT_MAX = 10_000  # ... up to this many (a flood of them must not grow the process)
RECORD_OVERHEAD = 128  # a record's bytes in a batch beyond its key and value, counted high


class ParkedLog:
    """The records this process parked: how many, recently, and the last one."""

    total = 0
    times: deque[float] = deque(maxlen=RECENT_MAX)
    last: dict[str, Any] | None = None

    @classmethod
    def note(cls, reason: Reason, topic: str, partition: int, offset: int, why: str) -> None:
        now = time.time()
        cls.total += 1
        cls.times.append(now)
        cls._expire(now)
        cls.last = {
            "reason": str(reason),
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "error": why[:300],
            "at": now,
        }
        metrics.child(metrics.PARKED, str(reason), topic).inc()
        metrics.child(metrics.REJECTED, str(reason)).inc()

    @classmethod
    def input_parked(cls, record: Any, exc: BaseException) -> None:
        reason = reason_for(exc)
        cls.note(reason, record.topic, record.partition, record.offset, _input_why(exc))
        log.warning(
            "record parked in the DLQ: its batch could not get past it; the stream goes on",
            extra={
                "reason": str(reason),
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": repr(exc)[:300],
            },
        )

    @classmethod
    def _expire(cls, now: float) -> None:
        while cls.times and cls.times[0] < now - RECENT_S:
            cls.times.popleft()

    @classmethod
    def summary(cls) -> dict[str, Any]:
        cls._expire(time.time())
        recent = len(cls.times)
        return {"recent": recent, "recent_s": RECENT_S, "total": cls.total, "last": cls.last}

    @classmethod
    def clear(cls) -> None:  # tests
        cls.total, cls.last = 0, None
        cls.times.clear()


def reason_for(exc: BaseException) -> Reason:
    """`unproducible` when the broker refused the data, `poison_batch` for anything else."""
    return Reason.UNPRODUCIBLE if isinstance(exc, REFUSED_DATA) else Reason.POISON_BATCH


def _input_why(exc: BaseException) -> str:
    return f"its batch failed until split down to this record alone: {exc!r}"


def park_input(s: Settings, record: Any, exc: BaseException) -> Output:
    """The DLQ record of an input record a batch could not get past (anything with topic,
    partition, offset, key and value); `ParkedLog.input_parked` once it is durable."""
    src = Source(record.topic, record.partition, record.offset, record.key, record.value)
    value = dlq_record(src, Rejection(reason_for(exc), _input_why(exc)), now_ms(), _bounds(s))
    return (s.topic_dlq, record.topic.encode(), value, None)


def fits(s: Settings, output: Output) -> bool:
    """Whether the producers can send `output` (`producer_max_request_bytes`)."""
    _, key, value, _ = output
    size = len(key or b"") + len(value or b"") + RECORD_OVERHEAD
    return size <= s.producer_max_request_bytes


def park_output(s: Settings, output: Output, origin: Source, why: str) -> Output:
    """The DLQ record standing for an output that cannot be produced; `origin` is the input
    it came from (its key and value are not used)."""
    topic, key, value, _ = output
    src = origin._replace(key=key, value=value)
    record = dlq_record(
        src, Rejection(Reason.UNPRODUCIBLE, why), now_ms(), _bounds(s), output=topic
    )
    ParkedLog.note(Reason.UNPRODUCIBLE, origin.topic, origin.partition, origin.offset, why)
    log.warning(
        "output parked in the DLQ: it cannot be produced; the stream goes on",
        extra={"output_topic": topic, "topic": origin.topic, "offset": origin.offset, "why": why},
    )
    return (s.topic_dlq, origin.topic.encode(), record, None)


def bounded(s: Settings, output: Output, origin: Source) -> Output:
    """`output`, or its DLQ record when it is over the producer's limit."""
    if fits(s, output):
        return output
    _, key, value, _ = output
    size = len(key or b"") + len(value or b"")
    why = (
        f"an output to {output[0]} of {size} bytes, over producer_max_request_bytes "
        f"({s.producer_max_request_bytes})"
    )
    return park_output(s, output, origin, why)


def _bounds(s: Settings) -> DlqBounds:
    return DlqBounds(s.dlq_max_value_bytes, s.dlq_max_key_bytes)
