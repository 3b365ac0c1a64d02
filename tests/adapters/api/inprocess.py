"""The HTTP API in this process, without a broker: a producer stub records what would go to
Kafka, a static verifier resolves tokens, and the sync view is fed by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from receipt_streams.adapters.api.app import Api
from receipt_streams.adapters.api.protocol import MatrixAppRunner
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.config import Settings
from receipt_streams.core.receipts import Receipt, ReceiptKey

USERS = {"tok-alice": "@alice:hs1", "tok-bob": "@bob:hs1"}
ADMIN_TOKEN = "admin-secret"
ROOM = "!room:hs1"


@dataclass
class StubProducer:
    """Stands in for AIOKafkaProducer: `send` returns an already-acknowledged future."""

    sent: list[tuple[str, dict[str, Any], bytes | None]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        self.sent.append((topic, orjson.loads(value), key))
        ack: asyncio.Future = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    async def stop(self) -> None:
        return None


class StaticVerifier:
    async def user_for(self, token: str) -> str | None:
        return USERS.get(token)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The view in memory, fed by hand (`make_api`); a data dir of the test's own all the
    same, so nothing here could take another's RocksDB lock."""
    admin = tmp_path / "admin-tokens.json"
    admin.write_bytes(orjson.dumps([ADMIN_TOKEN]))
    base: dict[str, Any] = {
        "admin_tokens_file": admin,
        "server_name": "hs1",
        "data_dir": tmp_path / "data",
        "read_store": "memory",
    }
    return Settings(**{**base, **overrides})


def make_api(s: Settings) -> tuple[Api, StubProducer]:
    feed = SyncFeed(s)
    feed.caught_up.set()
    index = feed.index
    index.apply_membership(0, 0, ROOM, "@alice:hs1", "join")
    index.apply_membership(0, 1, ROOM, "@bob:hs1", "join")
    for offset, (user, rtype, event) in enumerate(
        [
            ("@alice:hs1", "m.read", "$e1"),
            ("@alice:hs1", "m.read.private", "$e2"),
            ("@bob:hs1", "m.fully_read", "$e1"),
        ]
    ):
        key = ReceiptKey(ROOM, user, rtype, None)
        index.apply_receipt(0, offset, key, Receipt(event, offset, 1000 + offset, {}))
    producer = StubProducer()
    return Api(s, feed, StaticVerifier(), ready=lambda: True, producer=producer), producer  # type: ignore[arg-type]


class MatrixTestServer(TestServer):
    """A test server with the production runner (Matrix JSON for parser errors too)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return MatrixAppRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def clients(api: Api) -> AsyncIterator[tuple[TestClient, TestClient]]:
    """Test clients of the client listener and of the admin listener."""
    async with (
        TestClient(MatrixTestServer(api.app())) as client,
        TestClient(MatrixTestServer(api.admin_app())) as admin,
    ):
        yield client, admin


def raw_url(client: TestClient, path_and_query: str) -> URL:
    """A URL sent exactly as written: no re-quoting of `%` escapes by the client."""
    return URL(str(client.make_url("")).rstrip("/") + path_and_query, encoded=True)
