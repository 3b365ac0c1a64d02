"""Loop health: a loop that keeps failing is stuck (metrics, /readyz), a success clears it,
and the supervisor restarts a failed loop."""

from __future__ import annotations

import asyncio

import pytest

from receipt_streams.adapters import metrics
from receipt_streams.adapters.supervise import STUCK_AFTER, LoopHealth, supervise


@pytest.fixture(autouse=True)
def fresh_registry() -> None:
    LoopHealth.registry.clear()


def test_stuck_after_repeated_failures_and_cleared_by_a_success() -> None:
    health = LoopHealth.of("t-loop")
    restarts = metrics.child(metrics.LOOP_RESTARTS, "t-loop")
    before = restarts._value.get()
    for _ in range(STUCK_AFTER - 1):
        health.failed(RuntimeError("broker says no"))
    assert health.problem() is None and LoopHealth.problems() == []
    health.failed(RuntimeError("broker says no"))
    assert LoopHealth.problems() == [
        f"t-loop failed {STUCK_AFTER} times in a row: RuntimeError('broker says no')"
    ]
    assert metrics.child(metrics.LOOP_STUCK, "t-loop")._value.get() == 1
    assert restarts._value.get() == before + STUCK_AFTER
    health.succeeded()
    assert LoopHealth.problems() == []
    assert metrics.child(metrics.LOOP_STUCK, "t-loop")._value.get() == 0
    assert metrics.child(metrics.LOOP_LAST_SUCCESS, "t-loop")._value.get() > 0


async def test_supervise_restarts_a_failed_loop_and_counts_it() -> None:
    runs = 0
    resets = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        await asyncio.Event().wait()

    def reset() -> None:
        nonlocal resets
        resets += 1

    task = asyncio.create_task(supervise("t-supervised", run, on_failure=reset))
    for _ in range(40):  # the first restart comes after 1 s
        if runs == 2:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (runs, resets) == (2, 1)
    assert LoopHealth.of("t-supervised").failures == 1
