"""One data dir per process: a second process serving the API on a data dir whose read store
(`DATA_DIR/read-view`, RocksDB, the default) another process holds stops at its start with one
clear line naming the directory and RECEIPT_STREAMS_DATA_DIR, not a RocksDB stack trace."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from receipt_streams.entrypoints.running import EXIT_REFUSED
from tests.support.worker import WorkerProcess, free_port, worker_settings


@pytest.mark.parametrize(
    ("command", "update"),
    [("api", {}), ("worker", {}), ("worker", {"engine": "faust"})],
    ids=["api", "worker", "faust-worker"],
)
def test_a_second_process_on_a_held_data_dir_is_refused_clearly(
    kafka_bootstrap: str, tmp_path: Path, command: str, update: dict[str, Any]
) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path, data_dir=tmp_path / "shared")
    assert s.read_store == "rocksdb", "the default"
    first = WorkerProcess(s, tmp_path / "first.log", "api")
    second = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port(), **update}),
        tmp_path / "second.log",
        command,
    )
    try:
        first.start().wait_ready()
        second.start()
        assert second.proc is not None
        deadline = time.monotonic() + 60
        while second.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running:\n{second.tail()}"
            time.sleep(0.1)
        assert second.proc.returncode == EXIT_REFUSED, second.tail()
        assert first.proc is not None and first.proc.poll() is None, "the first one goes on"
    finally:
        second.stop()
        assert first.stop() == 0, first.tail()
    log = second.log_path.read_text(errors="replace")
    view = s.data_dir / "read-view"
    assert f"cannot start: {view} is in use by another process" in log, log
    assert "give each worker and API process a RECEIPT_STREAMS_DATA_DIR of its own" in log, log
    assert "Traceback" not in log, log
