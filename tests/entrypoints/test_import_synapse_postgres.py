"""`receipt-streams import-synapse postgresql://...` against a real PostgreSQL server (from the
pgserver wheel of the dev extra; tests/support/postgres.py), through the installed console
script: a dry run that writes nothing, an import paged by stream_id with its progress bar on a
terminal, input topics holding exactly the Synapse receipts, and a worker's table after it.

Never skipped: a server that cannot start fails this module.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from receipt_streams.config import Settings
from tests.support.postgres import postgres_server
from tests.support.synapse import EXPECTED, ROOM, TS, folded_by_a_worker, postgres_db
from tests.support.worker import TopicReader, settings_env, worker_settings

CLI = Path(sys.executable).with_name("receipt-streams")  # the installed console script
STREAM_IDS = [3, 4, 9, 10, 11, 20]  # gaps, as an updated receipt leaves in Synapse's table
PAGE = 2  # three pages of receipts


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def synapse(postgres: str) -> str:
    """A database of its own on the server, Synapse-shaped and filled; its URL."""
    import psycopg

    name = f"synapse_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = postgres.replace("/postgres?", f"/{name}?")
    postgres_db(dsn, STREAM_IDS)
    return dsn


def run(s: Settings, *argv: str, tty: bool = False) -> tuple[int, str, str]:
    """The console script with `s` in its environment: (exit code, stdout, stderr). With
    `tty`, stderr is a terminal (so the progress bar shows, as for an operator)."""
    cmd = [str(CLI), "import-synapse", *argv]
    if not tty:
        done = subprocess.run(cmd, env=settings_env(s), capture_output=True, timeout=120)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(cmd, env=settings_env(s), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The topic's values once it holds `count` records, and nothing more after a pause."""
    async with TopicReader(bootstrap, topic) as reader:
        await reader.wait_for(lambda r: len(r) >= count, timeout=30, what=f"{count} records")
        await asyncio.sleep(0.5)
        await reader.poll()
        return reader.values()


@pytest.mark.broker
async def test_import_from_postgresql(kafka_bootstrap: str, tmp_path: Path, synapse: str) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path)

    # A dry run reads every page and writes nothing: not even the topics exist after it.
    code, out, err = await asyncio.to_thread(
        run, s, synapse, "--dry-run", "--json", "--page", str(PAGE)
    )
    assert code == 0, err
    summary = orjson.loads(out)
    assert summary["database"] == "postgresql" and summary["dry_run"] is True
    assert summary["receipts_read"] == 6 and summary["last_stream_id"] == STREAM_IDS[-1]
    assert summary["client_receipts"] == 4 and summary["federation_receipts"] == 1
    assert summary["membership"] == 4 and summary["events"] == 5
    assert summary["skipped"] == {"not_joined": 1}
    assert "receipts" not in err  # no terminal, no progress bar
    assert not {s.topic_client, s.topic_federation} & await topic_names(kafka_bootstrap)

    # The import, on a terminal: a progress bar over the 6 rows, the summary on stdout.
    code, out, err = await asyncio.to_thread(run, s, synapse, "--page", str(PAGE), tty=True)
    assert code == 0, out + err
    assert "receipts: 100%" in err and "6/6" in err, err
    assert "wrote: 4 client receipts" in out and "1 remote receipts in 1 EDUs" in out, out
    assert "skipped: 1 not_joined" in out and f"--after-stream-id {STREAM_IDS[-1]}" in out, out

    # The input topics hold exactly Synapse's receipts, once each.
    client = await read_all(kafka_bootstrap, s.topic_client, 4)
    assert sorted(client, key=lambda v: v["ts"]) == [
        {"room_id": ROOM, "user_id": "@a:hs1", "receipt_type": "m.read", "event_id": "$e2",
         "ts": TS + 3},
        {"room_id": ROOM, "user_id": "@a:hs1", "receipt_type": "m.read.private",
         "event_id": "$e1", "ts": TS + 4},
        {"room_id": ROOM, "user_id": "@b:hs1", "receipt_type": "m.read", "event_id": "$t1",
         "ts": TS + 9, "thread_id": "$root"},
        {"room_id": ROOM, "user_id": "@b:hs1", "receipt_type": "m.read", "event_id": "$old",
         "ts": TS + 10},
    ]  # fmt: skip
    federation = await read_all(kafka_bootstrap, s.topic_federation, 1)
    assert [(v["origin"], v["edu"]["content"]) for v in federation] == [
        ("hs2", {ROOM: {"m.read": {"@r:hs2": {"event_ids": ["$e2"], "data": {"ts": TS + 11}}}}})
    ]
    assert len(await read_all(kafka_bootstrap, s.topic_membership, 4)) == 4
    assert len(await read_all(kafka_bootstrap, s.topic_events, 5)) == 5

    # Resuming after the last stream_id finds nothing more to write.
    code, out, err = await asyncio.to_thread(
        run, s, synapse, "--after-stream-id", str(STREAM_IDS[-1]), "--receipts-only", "--json"
    )
    assert code == 0, err
    assert orjson.loads(out)["receipts_read"] == 0

    # A worker folds them: its table is exactly what Synapse had.
    log = tmp_path / "worker.log"
    assert await folded_by_a_worker(kafka_bootstrap, s, log, EXPECTED) == EXPECTED
