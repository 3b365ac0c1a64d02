"""Access-token verifiers (CONTRACT §5): a static token file, and the homeserver's whoami
asked over real HTTP (a local aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receipt_streams.adapters.api.auth import (
    NoTokens,
    StaticTokens,
    VerifierUnavailable,
    WhoamiVerifier,
)

WHOAMI = "/_matrix/client/v3/account/whoami"

# --- StaticTokens ----------------------------------------------------------------------------


async def test_static_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"tok-a": "@a:hs1", "tok-b": "@b:hs2"}')
    tokens = StaticTokens(path)
    assert await tokens.user_for("tok-a") == "@a:hs1"
    assert await tokens.user_for("tok-b") == "@b:hs2"
    assert await tokens.user_for("nope") is None
    assert await tokens.user_for("") is None


@pytest.mark.parametrize("text", ["[]", '["tok", "@a:hs1"]', "null", "3", '"tok"'])
def test_static_tokens_file_not_an_object(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="JSON object"):
        StaticTokens(path)


def test_static_tokens_file_not_json(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("tok: @a:hs1")
    with pytest.raises(ValueError):
        StaticTokens(path)


async def test_no_tokens() -> None:
    assert await NoTokens().user_for("anything") is None


# --- WhoamiVerifier --------------------------------------------------------------------------


@dataclass
class Homeserver:
    """What the fake homeserver knows, and what it was asked."""

    users: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # forced answer, for errors
    delay_s: float = 0.0
    hits: list[str | None] = field(default_factory=list)  # Authorization headers seen
    url: str = ""

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.headers.get("Authorization"))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status is not None:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "boom"}, status=self.status)
        header = request.headers.get("Authorization", "")
        user = self.users.get(header.removeprefix("Bearer "))
        if user is None:
            return web.json_response(
                {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"}, status=401
            )
        return web.json_response({"user_id": user, "device_id": "DEV", "is_guest": False})


@pytest.fixture
async def homeserver() -> AsyncIterator[Homeserver]:
    hs = Homeserver(users={"tok-a": "@a:hs1", "tok-b": "@b:hs1"})
    app = web.Application()
    app.router.add_get(WHOAMI, hs.whoami)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    hs.url = str(server.make_url("/"))
    try:
        yield hs
    finally:
        await server.close()


@pytest.fixture
async def verifier(homeserver: Homeserver) -> AsyncIterator[WhoamiVerifier]:
    v = WhoamiVerifier(homeserver.url, ttl_s=60)
    try:
        yield v
    finally:
        await v.close()


async def test_whoami_known_token(homeserver: Homeserver, verifier: WhoamiVerifier) -> None:
    assert verifier.url == homeserver.url.rstrip("/") + WHOAMI
    assert await verifier.user_for("tok-a") == "@a:hs1"
    assert homeserver.hits == ["Bearer tok-a"], "the token goes in the Authorization header"


async def test_whoami_unknown_token(homeserver: Homeserver, verifier: WhoamiVerifier) -> None:
    assert await verifier.user_for("nope") is None
    assert homeserver.hits == ["Bearer nope"]


@pytest.mark.parametrize("status", [500, 502, 503, 429, 404])
async def test_whoami_server_errors_are_unavailable(
    homeserver: Homeserver, verifier: WhoamiVerifier, status: int
) -> None:
    homeserver.status = status
    with pytest.raises(VerifierUnavailable):
        await verifier.user_for("tok-a")
    # Failures are not cached: once the homeserver recovers the token works.
    homeserver.status = None
    assert await verifier.user_for("tok-a") == "@a:hs1"
    assert len(homeserver.hits) == 2


async def test_whoami_403_is_unknown(homeserver: Homeserver, verifier: WhoamiVerifier) -> None:
    homeserver.status = 403
    assert await verifier.user_for("tok-a") is None


async def test_whoami_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    v = WhoamiVerifier(f"http://127.0.0.1:{port}", ttl_s=60)
    try:
        with pytest.raises(VerifierUnavailable):
            await v.user_for("tok-a")
        assert v.cache == {}
    finally:
        await v.close()


async def test_whoami_timeout_is_unavailable(homeserver: Homeserver) -> None:
    """A homeserver that hangs: the client's total timeout fires as a plain TimeoutError."""
    homeserver.delay_s = 2.0
    v = WhoamiVerifier(homeserver.url, ttl_s=60)
    v._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1))
    try:
        with pytest.raises(VerifierUnavailable):
            await v.user_for("tok-a")
    finally:
        await v.close()


async def test_whoami_non_json_200_is_unavailable(homeserver: Homeserver) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy login</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get(WHOAMI, html)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    v = WhoamiVerifier(str(server.make_url("/")), ttl_s=60)
    try:
        with pytest.raises(VerifierUnavailable):
            await v.user_for("tok-a")
    finally:
        await v.close()
        await server.close()


async def test_whoami_answers_cached_within_ttl(
    homeserver: Homeserver, verifier: WhoamiVerifier
) -> None:
    for _ in range(5):
        assert await verifier.user_for("tok-a") == "@a:hs1"
        assert await verifier.user_for("nope") is None  # unknown tokens are cached too
    assert homeserver.hits == ["Bearer tok-a", "Bearer nope"]
    assert await verifier.user_for("tok-b") == "@b:hs1"  # each token its own entry
    assert len(homeserver.hits) == 3


@pytest.mark.parametrize("ttl_s", [0, 0.05])
async def test_whoami_asked_again_after_ttl(homeserver: Homeserver, ttl_s: float) -> None:
    v = WhoamiVerifier(homeserver.url, ttl_s=ttl_s)
    try:
        assert await v.user_for("tok-a") == "@a:hs1"
        await asyncio.sleep(ttl_s + 0.02)
        homeserver.users["tok-a"] = "@renamed:hs1"
        assert await v.user_for("tok-a") == "@renamed:hs1"
        del homeserver.users["tok-a"]  # logged out
        await asyncio.sleep(ttl_s + 0.02)
        assert await v.user_for("tok-a") is None
        assert len(homeserver.hits) == 3
    finally:
        await v.close()


async def test_whoami_close(homeserver: Homeserver) -> None:
    v = WhoamiVerifier(homeserver.url + "/", ttl_s=60)  # a trailing slash is tolerated
    await v.close()  # never used: nothing to close
    assert await v.user_for("tok-a") == "@a:hs1"
    session = v._session
    assert session is not None and not session.closed
    await v.close()
    assert session.closed
    await v.close()  # twice is harmless


# --- AdminTokens -----------------------------------------------------------------------------


def test_admin_tokens(tmp_path: Path) -> None:
    from receipt_streams.adapters.api.auth import AdminTokens

    path = tmp_path / "admin.json"
    path.write_text('["one", "two"]')
    tokens = AdminTokens.from_file(path)
    assert tokens.allows("one") and tokens.allows("two")
    assert not tokens.allows("three") and not tokens.allows("") and not tokens.allows("One")
    assert not AdminTokens([]).allows("one")


@pytest.mark.parametrize("text", ['{"tok": "@a:hs1"}', '[""]', "[1]", '"tok"', "null"])
def test_admin_tokens_file_must_be_a_list_of_tokens(tmp_path: Path, text: str) -> None:
    from receipt_streams.adapters.api.auth import AdminTokens

    path = tmp_path / "admin.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="JSON list"):
        AdminTokens.from_file(path)
