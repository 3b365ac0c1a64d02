"""The collector's pauses are measured, and a ready process's heap is frozen (out of the
full collections' walk), after its garbage is collected."""

from __future__ import annotations

import asyncio
import gc

from receipt_streams.adapters import metrics
from receipt_streams.adapters.collector import freeze_when_ready


def _count(generation: str) -> float:
    for sample in metrics.GC_PAUSE.collect()[0].samples:
        if sample.name.endswith("_count") and sample.labels["generation"] == generation:
            return sample.value
    return 0.0


def test_every_collection_is_timed() -> None:
    metrics.time_gc_pauses()
    metrics.time_gc_pauses()  # once per process, however often asked
    before = _count("2")
    gc.collect()
    assert _count("2") == before + 1
    assert gc.callbacks.count(metrics._gc_timer) == 1


async def test_the_heap_is_frozen_once_ready() -> None:
    gc.unfreeze()  # an in-process API test earlier in the session may have frozen it
    ready = asyncio.Event()
    try:
        task = asyncio.create_task(freeze_when_ready(ready.is_set, poll_s=0.01))
        await asyncio.sleep(0.05)
        assert not task.done() and gc.get_freeze_count() == 0
        ready.set()
        await asyncio.wait_for(task, 2)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
