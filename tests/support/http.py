"""A small Matrix client for tests: bearer tokens, JSON in and out."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import aiohttp
import orjson

CLIENT = "/_matrix/client/v3"


def get(url: str) -> tuple[int, bytes]:
    """A blocking GET: the status and body, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session, self.base, self.token = session, base, token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(
        self, method: str, path: str, body: bytes | dict | None = None, **params: Any
    ) -> tuple[int, Any]:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        async with self.session.request(
            method, self.base + path, data=data, params=params, headers=self._headers()
        ) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    async def receipt(
        self, room: str, rtype: str, event: str, body: Any = None, thread_id: str | None = None
    ) -> tuple[int, Any]:
        if body is None:
            body = {} if thread_id is None else {"thread_id": thread_id}
        return await self.request("POST", f"{CLIENT}/rooms/{room}/receipt/{rtype}/{event}", body)

    async def read_markers(self, room: str, body: Any) -> tuple[int, Any]:
        return await self.request("POST", f"{CLIENT}/rooms/{room}/read_markers", body)

    async def sync(self, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": timeout}
        if since:
            params["since"] = since
        status, body = await self.request("GET", f"{CLIENT}/sync", **params)
        assert status == 200, body
        return body


def receipts_in(sync: dict[str, Any], room: str) -> dict[tuple[str, str, str | None], str]:
    """(user, type, thread) -> event, from a /sync response's m.receipt event of `room`."""
    out = {}
    for event in sync["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", []):
        for event_id, by_type in event["content"].items():
            for rtype, users in by_type.items():
                for user, data in users.items():
                    out[(user, rtype, data.get("thread_id"))] = event_id
    return out


def fully_read_in(sync: dict[str, Any], room: str) -> str | None:
    events = sync["rooms"]["join"].get(room, {}).get("account_data", {}).get("events", [])
    return events[0]["content"]["event_id"] if events else None
