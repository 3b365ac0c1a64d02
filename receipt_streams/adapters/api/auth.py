"""Access-token verifiers: who is calling. Pluggable; results cached briefly."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import aiohttp
import orjson

from receipt_streams.config import Settings

log = logging.getLogger(__name__)


class VerifierUnavailable(RuntimeError):
    """The homeserver could not be asked (network error or 5xx)."""


class TokenVerifier(Protocol):
    async def user_for(self, token: str) -> str | None:
        """The user the token belongs to, or None for an unknown token."""


class StaticTokens:
    """A JSON file `{"<token>": "@user:server", ...}`, for development and tests."""

    def __init__(self, path: Path) -> None:
        tokens = orjson.loads(path.read_bytes())
        if not isinstance(tokens, dict):
            raise ValueError(f"{path}: expected a JSON object of token -> user ID")
        self.tokens: dict[str, str] = tokens

    async def user_for(self, token: str) -> str | None:
        return self.tokens.get(token)


class WhoamiVerifier:
    """The homeserver's `GET /_matrix/client/v3/account/whoami`, cached for `ttl_s`."""

    def __init__(self, homeserver_url: str, ttl_s: float) -> None:
        self.url = homeserver_url.rstrip("/") + "/_matrix/client/v3/account/whoami"
        self.ttl_s = ttl_s
        self.cache: dict[str, tuple[str | None, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def user_for(self, token: str) -> str | None:
        hit = self.cache.get(token)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(
                self.url, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    user = body.get("user_id") if isinstance(body, dict) else None
                    if not isinstance(user, str):
                        raise VerifierUnavailable("whoami answered without a user_id")
                elif resp.status in (401, 403):
                    user = None
                else:
                    raise VerifierUnavailable(f"whoami answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:  # the total timeout: a TimeoutError
            raise VerifierUnavailable(f"whoami failed: {exc!r}") from exc
        if len(self.cache) > 100_000:
            self.cache.clear()
        self.cache[token] = (user, now + self.ttl_s)
        return user

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class NoTokens:
    """No verifier configured: every token is unknown (a warning says so at start)."""

    async def user_for(self, token: str) -> str | None:
        return None


def verifier_for(settings: Settings) -> TokenVerifier:
    """The verifier the configuration asks for: a tokens file, else whoami, else none."""
    if settings.tokens_file is not None:
        return StaticTokens(settings.tokens_file)
    if settings.homeserver_url:
        return WhoamiVerifier(settings.homeserver_url, settings.whoami_cache_s)
    log.warning(
        "no RECEIPT_STREAMS_TOKENS_FILE or RECEIPT_STREAMS_HOMESERVER_URL: "
        "every client request will be refused as M_UNKNOWN_TOKEN"
    )
    return NoTokens()


class AdminTokens:
    """The admin listener's bearer tokens (a JSON list of strings), compared in constant time.
    Kept apart from client tokens: no Matrix user can read the operators' views."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    @classmethod
    def from_file(cls, path: Path) -> AdminTokens:
        tokens = orjson.loads(path.read_bytes())
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f"{path}: expected a JSON list of non-empty token strings")
        return cls(tokens)

    def allows(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        return any([hmac.compare_digest(digest, d) for d in self._digests])


def admin_tokens_for(settings: Settings) -> AdminTokens:
    if settings.admin_tokens_file is None:
        return AdminTokens([])
    return AdminTokens.from_file(settings.admin_tokens_file)
