"""Test access to the worker-process and Kafka helpers (they live in the package, where the
benchmark uses them too), and reading a topic to its end."""

from typing import Any

from receipt_streams.bench.process import (
    TopicReader,
    WorkerProcess,
    dumps,
    free_port,
    produce,
    settings_env,
    worker_settings,
)

__all__ = [
    "TopicReader",
    "WorkerProcess",
    "dumps",
    "free_port",
    "produce",
    "read_all",
    "settings_env",
    "worker_settings",
]


async def read_all(bootstrap: str, topic: str, count: int, timeout: float = 60) -> list[Any]:
    """Every record of `topic`, once `count` arrived and three more polls found nothing new
    (anything beyond `count` would be a duplicate)."""
    async with TopicReader(bootstrap, topic) as reader:
        what = f"{count} records"
        await reader.wait_for(lambda got: len(got) >= count, timeout=timeout, what=what)
        for _ in range(3):
            await reader.poll(timeout_ms=300)
        return list(reader.records)
