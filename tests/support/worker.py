"""Test access to the worker-process and Kafka helpers (they live in the package, where the
benchmark uses them too)."""

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
    "settings_env",
    "worker_settings",
]
