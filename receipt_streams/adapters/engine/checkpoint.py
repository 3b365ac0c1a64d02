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
failure stops every checkpoint after it (the run restarts from the last commit).
"""

from __future__ import annotations

import asyncio
import time

from receipt_streams.adapters import metrics
from receipt_streams.adapters.engine.task import PartitionTask, TaskBatch


class Checkpoint:
    def __init__(self, batches: list[tuple[PartitionTask, TaskBatch]]) -> None:
        self.batches = batches

    async def commit(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        started = time.perf_counter()
        await asyncio.gather(*(self._commit(task, batch) for task, batch in self.batches))
        metrics.child(metrics.CHECKPOINT_SECONDS, "fold").observe(time.perf_counter() - started)

    @staticmethod
    async def _commit(task: PartitionTask, batch: TaskBatch) -> None:
        first, held = task.changelog_records(batch)
        written = await task.sink.publish([batch.outputs + first, held], batch.offsets)
        task.settle(batch, written)
