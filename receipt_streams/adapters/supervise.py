"""Keep a background loop alive across failures, and tell when it cannot make progress.

A loop that fails the same batch again and again restarts forever; without a signal it looks
healthy while nothing moves. Each loop has a `LoopHealth`: restarts and the last success go to
the metrics, and `/readyz` answers 503 with the reason while a loop is stuck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from receipt_streams.adapters import metrics

log = logging.getLogger(__name__)

STUCK_AFTER = 3  # consecutive failures without a success in between
_BACKOFF_MAX_S = 10.0


class LoopHealth:
    """Consecutive failures and the last success of one named loop in this process."""

    registry: dict[str, LoopHealth] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.last_error = ""
        self.last_success: float | None = None

    @classmethod
    def of(cls, name: str) -> LoopHealth:
        if name not in cls.registry:
            cls.registry[name] = cls(name)
        return cls.registry[name]

    def succeeded(self) -> None:
        """Called after each unit of progress (a batch made durable, a relay cycle)."""
        if self.failures:
            self.failures = 0
            metrics.child(metrics.LOOP_STUCK, self.name).set(0)
        self.last_success = time.time()
        metrics.child(metrics.LOOP_LAST_SUCCESS, self.name).set(self.last_success)

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = repr(exc)[:300]
        metrics.child(metrics.LOOP_RESTARTS, self.name).inc()
        if self.failures >= STUCK_AFTER:
            metrics.child(metrics.LOOP_STUCK, self.name).set(1)

    def problem(self) -> str | None:
        if self.failures < STUCK_AFTER:
            return None
        return f"{self.name} failed {self.failures} times in a row: {self.last_error}"

    @classmethod
    def problems(cls) -> list[str]:
        """Why this process is not making progress (empty when every loop is)."""
        return [p for health in cls.registry.values() if (p := health.problem())]


async def supervise(
    name: str, run: Callable[[], Awaitable[None]], on_failure: Callable[[], None] | None = None
) -> None:
    """Run `run` again after it fails (1 s, doubling to 10 s while it keeps failing);
    returns only when cancelled."""
    health = LoopHealth.of(name)
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            health.failed(exc)
            delay = min(_BACKOFF_MAX_S, 2.0 ** (health.failures - 1))
            log.exception(
                "%s failed; restarting in %.0f s from the last commit (failure %d in a row%s)",
                name,
                delay,
                health.failures,
                "; /readyz reports it stuck" if health.problem() else "",
            )
            if on_failure is not None:
                on_failure()
            await asyncio.sleep(delay)
