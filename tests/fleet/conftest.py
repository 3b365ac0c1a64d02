"""A private broker for the broker fault case: it is killed and restarted, so it must not be
the session broker other tests use."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import load_launcher


class PrivateKafka:
    """A LocalKafka whose JVM is started and restarted by one long-lived thread: the JVM dies
    with the thread that started it (PR_SET_PDEATHSIG), so not with a short-lived one."""

    def __init__(self, workdir: Path) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="private-kafka")
        self.kafka = load_launcher().LocalKafka(workdir)
        self.thread.submit(self.kafka.start, timeout=90).result()
        self.bootstrap: str = self.kafka.bootstrap_servers

    async def kill(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.kafka.kill)

    async def restart(self) -> float:
        """kill -9, then the same broker on the same address and data; seconds it took."""
        kafka = await asyncio.get_running_loop().run_in_executor(
            self.thread, lambda: self.kafka.restart(timeout=90)
        )
        assert kafka.bootstrap_servers == self.bootstrap
        return kafka.start_seconds

    def close(self) -> None:
        self.thread.submit(self.kafka.stop).result()
        self.thread.shutdown()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path / "broker")
    try:
        yield kafka
    finally:
        kafka.close()
