"""A worker's local state directory: what is on disk, whether a worker is using it, wiping it.

The batch engine keeps one RocksDB store per (table, partition) under `stores/`, each with
the changelog offset it holds; the Faust engine keeps `tables/` and a `RUNNING` marker (with
its pid) while it runs. A worker restores wiped stores from the changelogs at its next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from receipt_streams.ops.output import CtlError

STATE_DIRS = ("stores", "tables")


def stores_on_disk(data_dir: Path) -> list[Path]:
    return sorted(
        p for d in STATE_DIRS if (data_dir / d).is_dir() for p in (data_dir / d).iterdir()
    )


def users(data_dir: Path) -> list[str]:
    """Why the directory is in use now: a RUNNING marker of a live process, or a LOCK held by
    another process (with a POSIX lock: RocksDB's on each open store, a worker's on its data
    dir, `stores.claim_dir`)."""
    found = []
    marker = data_dir / "RUNNING"
    if marker.exists():
        pid = marker.read_text().strip()
        if pid.isdigit() and _alive(int(pid)):
            found.append(f"{marker} names a live process (pid {pid})")
    for lock in sorted(data_dir.rglob("LOCK")):
        if _locked(lock):
            found.append(f"{lock} is locked by a running process")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def wipe(data_dir: Path, dry_run: bool = False) -> list[str]:
    """Remove the stores (and a stale RUNNING marker); refuse while a worker uses them."""
    if not data_dir.is_dir():
        raise CtlError(
            f"{data_dir} is not a directory",
            "pass the worker's RECEIPT_STREAMS_DATA_DIR (default .local/worker)",
        )
    if busy := users(data_dir):
        raise CtlError(
            f"{data_dir} is in use: " + "; ".join(busy),
            "stop that worker first (SIGTERM), then run this again",
        )
    removed = [str(p) for d in STATE_DIRS if (p := data_dir / d).exists()]
    if not dry_run:
        for d in STATE_DIRS:
            shutil.rmtree(data_dir / d, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (data_dir / "RUNNING").unlink()
    return removed
