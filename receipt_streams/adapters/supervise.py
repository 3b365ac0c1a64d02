"""Keep a background loop alive across broker errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def supervise(
    name: str, run: Callable[[], Awaitable[None]], on_failure: Callable[[], None] | None = None
) -> None:
    """Run `run` again 1 s after it fails; returns only when cancelled."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting in 1 s", name)
            if on_failure is not None:
                on_failure()
            await asyncio.sleep(1)
