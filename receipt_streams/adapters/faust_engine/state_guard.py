"""Local table state is trusted only after a clean shutdown.

Faust's RocksDB store writes a value locally before its changelog record is acknowledged. A
worker killed in between keeps a "ghost" value that is in no changelog: the input would be
reprocessed, find the ghost, change nothing, and the change would never reach the changelog
or any delta. So, as Kafka Streams does, local state left by a worker that did not stop
cleanly is wiped and rebuilt from the changelogs, which hold only acknowledged writes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


class StateGuard:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tables_dir = data_dir / "tables"
        self.marker = data_dir / "RUNNING"

    def open(self) -> bool:
        """Mark the state in use; returns True when stale state from a crash was wiped."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        wiped = False
        if self.marker.exists():
            log.warning(
                "previous worker did not stop cleanly: rebuilding tables from changelogs",
                extra={"tables_dir": str(self.tables_dir)},
            )
            shutil.rmtree(self.tables_dir, ignore_errors=True)
            wiped = True
        self.marker.write_text(str(os.getpid()))
        return wiped

    def close_clean(self) -> None:
        """Call only after the worker flushed everything and stopped without a crash."""
        self.marker.unlink(missing_ok=True)
