"""The transaction retry tuning reaches aiokafka (a module constant, no option: an aiokafka
upgrade that drops it must fail here, not silently bring back 20 ms per batch)."""

from __future__ import annotations

from pathlib import Path

from aiokafka.producer import sender as aiokafka_sender

from receipt_streams.adapters.transactions import producer
from tests.support.worker import worker_settings


async def test_the_retry_backoff_after_a_commit_is_the_setting(tmp_path: Path) -> None:
    assert hasattr(aiokafka_sender, "BACKOFF_OVERRIDE")
    s = worker_settings("127.0.0.1:1", tmp_path, txn_retry_backoff_ms=3)
    producer(s)  # never started: building it applies the setting
    assert aiokafka_sender.BACKOFF_OVERRIDE == 0.003
