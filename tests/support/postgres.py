"""A real PostgreSQL server for the tests, from the `pgserver` wheel (PostgreSQL's binaries on
PyPI, installed by the dev extra: no system package, no download at run time).

It runs in a temp dir, listens on a Unix socket there only, and is stopped and deleted at the
end. As root, pgserver runs PostgreSQL as a system user of its own (`pgserver`, created once
with useradd): PostgreSQL refuses to run as root. A server that cannot start fails the test
that asked for it; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh server; yields its libpq URL (postgresql://postgres@/postgres?host=SOCKET_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR (CI, root)
        import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="rs-pg-"))  # under /tmp: a short socket path
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
