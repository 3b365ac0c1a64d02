"""Making one batch durable (quix-streams' Checkpoint; Kafka Streams' commit).

For each task the batch touched, concurrently:

1. publish, through the task's sink:
   - `exactly_once`: in one transaction, the batch's outputs (DLQ, outbox, inbound entries),
     its changelog writes (coalesced per key) and its input offsets; a fenced task raises;
   - `at_least_once`: the outputs and the receipts and room-state changelog writes, then,
     once those are acknowledged, the held-receipt writes (a held receipt is forgotten only
     once what it became is durable), then the input offsets;
2. only then write the batch to the task's stores, with the changelog offsets it reached, and
   let the overlays forget it.

Batches become durable strictly in order: a checkpoint waits for the one before it, and a
failure stops every checkpoint after it. The failure says, per task, the records of the
batch and the error, so that the engine can split the batch to find a record at fault
(`isolation.py`), or restart from the last commit when no record is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.engine.task import PartitionTask, TaskBatch
from receipt_streams.adapters.isolation import NotTheRecords, caused_by_contents
from receipt_streams.adapters.transactions import Fenced

Committed = dict[TopicPartition, int]


class BatchFailed(Exception):
    """Tasks of a batch could not make it durable: per task, its records and the error."""

    def __init__(self, failures: dict[int, tuple[list[Any], BaseException]]) -> None:
        self.failures = failures
        super().__init__(
            "; ".join(f"partition {p}: {exc!r}" for p, (_, exc) in sorted(failures.items()))
        )

    def on_contents(self) -> bool:
        """Every task failed on what its batch holds: split them, park what is at fault."""
        return all(caused_by_contents(exc) for _, exc in self.failures.values())

    def cause(self) -> BaseException:
        """The error to restart on: a fencing first, else one no record caused."""
        errors = [exc for _, exc in self.failures.values()]
        for exc in errors:
            if isinstance(exc, Fenced):
                return exc
        return next((e for e in errors if not caused_by_contents(e)), errors[0])


async def make_durable(task: PartitionTask, batch: TaskBatch, committed: Committed) -> None:
    """Publish one task's batch, then write it to the task's stores. Only what the broker
    says about the records may be put down to them: a failure of the engine's own steps is
    raised as `NotTheRecords`."""
    try:
        first, held = task.changelog_records(batch)
    except Exception as exc:
        raise NotTheRecords(f"changelog records of a batch: {exc!r}") from exc
    written = await task.sink.publish([batch.outputs + first, held], batch.offsets)
    committed.update(batch.offsets)
    try:
        task.settle(batch, written)
    except Exception as exc:  # committed already: no record of it is at fault
        raise NotTheRecords(f"store write after the commit failed: {exc!r}") from exc


class Checkpoint:
    def __init__(
        self, batches: list[tuple[PartitionTask, TaskBatch]], committed: Committed
    ) -> None:
        self.batches = batches
        self.committed = committed  # input offsets made durable, updated per task

    async def commit(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        started = time.perf_counter()
        results = await asyncio.gather(
            *(make_durable(task, batch, self.committed) for task, batch in self.batches),
            return_exceptions=True,
        )
        failures = {
            task.number: (batch.records, result)
            for (task, batch), result in zip(self.batches, results, strict=True)
            if isinstance(result, BaseException)
        }
        if failures:
            raise BatchFailed(failures)
        metrics.child(metrics.CHECKPOINT_SECONDS, "fold").observe(time.perf_counter() - started)
