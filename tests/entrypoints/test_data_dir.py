"""One data dir per process: a second process on a data dir another holds stops at its start
with exit code 2 and one clear line naming the directory and RECEIPT_STREAMS_DATA_DIR, not a
RocksDB stack trace: a process serving the API on a held read store (`DATA_DIR/read-view`,
RocksDB, the default), or a second worker on a data dir (which a worker claims whole)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from receipt_streams.entrypoints.running import EXIT_REFUSED
from tests.support.worker import WorkerProcess, free_port, worker_settings

NO_API = {"serve_api": False, "run_relays": False}


@pytest.mark.parametrize(
    ("first", "second", "held"),
    [
        (("api", {}), ("api", {}), "read-view"),
        (("api", {}), ("worker", {}), "read-view"),
        (("api", {}), ("worker", {"engine": "faust"}), "read-view"),
        (("worker", NO_API), ("worker", NO_API), ""),
        (("worker", NO_API), ("worker", {**NO_API, "engine": "faust"}), ""),
    ],
    ids=["api-api", "api-worker", "api-faust", "worker-worker", "worker-faust"],
)
def test_a_second_process_on_a_held_data_dir_is_refused_clearly(
    kafka_bootstrap: str,
    tmp_path: Path,
    first: tuple[str, dict[str, Any]],
    second: tuple[str, dict[str, Any]],
    held: str,
) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path, data_dir=tmp_path / "shared")
    assert s.read_store == "rocksdb", "the default"
    one = WorkerProcess(s.model_copy(update=first[1]), tmp_path / "first.log", first[0])
    two = WorkerProcess(
        s.model_copy(update={"web_port": free_port(), "admin_port": free_port(), **second[1]}),
        tmp_path / "second.log",
        second[0],
    )
    try:
        one.start().wait_ready()
        two.start()
        assert two.proc is not None
        deadline = time.monotonic() + 60
        while two.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running:\n{two.tail()}"
            time.sleep(0.1)
        assert two.proc.returncode == EXIT_REFUSED, two.tail()
        assert one.proc is not None and one.proc.poll() is None, "the first one goes on"
    finally:
        two.stop()
        assert one.stop() == 0, one.tail()
    log = two.log_path.read_text(errors="replace")
    path = s.data_dir / held if held else s.data_dir
    assert f"cannot start: {path} is in use by another process" in log, log
    assert "give each worker and API process a RECEIPT_STREAMS_DATA_DIR of its own" in log, log
    assert "Traceback" not in log, log
