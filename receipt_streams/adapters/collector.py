"""The garbage collector's pauses, kept short once a process is ready.

A full (generation 2) collection walks every tracked object: 45-100 ms in a worker or an
API process after start-up (`receipt_streams_gc_pause_seconds`), during which no batch is
folded and no request answered, so it lands on the latency's tail. What exists once a
process is ready (modules, settings, clients, a restored view) lives as long as the process:
`gc.freeze()` moves it out of the collector's sight, and later collections walk only what
came after. The frozen objects are never collected, so garbage is collected first.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


async def freeze_when_ready(ready: Callable[[], bool], poll_s: float = 0.5) -> None:
    while not ready():  # noqa: ASYNC110 (readiness is a state of several loops, not an event)
        await asyncio.sleep(poll_s)
    gc.collect()
    gc.freeze()
    log.info(
        "ready: the start-up heap is frozen for the collector",
        extra={"frozen_objects": gc.get_freeze_count()},
    )
