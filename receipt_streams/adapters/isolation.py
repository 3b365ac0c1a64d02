"""Finding the record a batch cannot get past (issue 12): split the batch until it is found.

A batch is made durable whole or not at all. When one of its records cannot be processed, or
makes an output the broker refuses (too large, invalid), the whole batch fails; restarted from
the last commit, it fails again, forever, and everything behind it waits. So a failure that the
batch's contents may have caused is answered by splitting: the batch is tried again in halves,
each half that fails is split again, and a single record that still fails is parked (in the
DLQ, with the reason) while every other record goes through once, in order.

A failure that no record causes (the broker down, a leader moving, a timeout, another worker
taking the partition over, a producer's own state) is never answered by parking: the loop
restarts from its last commit with backoff, as before, and is reported stuck if it persists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownError,
    UnsupportedForMessageFormatError,
)

T = TypeVar("T")

# The broker (or the client, before sending) refused the data itself: another batch without
# the offending record would go through. UnknownError is what aiokafka makes of codes it does
# not know, such as INVALID_RECORD (87, a record the broker's validation refused).
REFUSED_DATA: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
    PolicyViolationError,
    UnknownError,
)


class NotTheRecords(Exception):
    """Marks a failure no record of the batch caused (e.g. a store write after the commit):
    the loop restarts, nothing is parked."""


def caused_by_contents(exc: BaseException) -> bool:
    """May `exc` come from what the batch holds, so that splitting the batch can find the
    record? True for data the broker refused and for errors raised while processing (a bug a
    record hits); false for everything about the broker, the network, time, fencing and the
    producer's own state (any other Kafka error), and for resource exhaustion."""
    if isinstance(exc, REFUSED_DATA):
        return True
    if isinstance(exc, KafkaError | NotTheRecords | OSError | TimeoutError | MemoryError):
        return False
    return isinstance(exc, Exception) and not isinstance(exc, asyncio.CancelledError)


Attempt = Callable[[Sequence[T]], Awaitable[BaseException | None]]
Park = Callable[[T, BaseException], Awaitable[None]]


async def isolate(items: Sequence[T], attempt: Attempt[T], park: Park[T]) -> list[T]:
    """Get `items` through, in order: `attempt(part)` processes a contiguous part and returns
    None, or the error that part failed with (after undoing the part: it is tried again in
    halves). A single item that fails is handed to `park` with its error. Returns the parked
    items. When failures come exactly from some items, every other item is processed exactly
    once, in order, and those items alone are parked, in about 2 log2(n) attempts per parked
    item. An error that `attempt` raises (rather than returns) stops everything."""
    parked: list[T] = []

    async def through(part: Sequence[T]) -> None:
        error = await attempt(part)
        if error is None:
            return
        if len(part) == 1:
            await park(part[0], error)
            parked.append(part[0])
            return
        middle = len(part) // 2
        await through(part[:middle])
        await through(part[middle:])

    if items:
        await through(list(items))
    return parked
