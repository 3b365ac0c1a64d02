"""Whatever a client sends (any method, path, query, headers, body) to any route of either
listener: never a 5xx, every error a Matrix `{"errcode", "error"}` body, and the API still
serves a normal request afterwards (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receipt_streams.core.sync_view import Token
from tests.adapters.api.inprocess import ADMIN_TOKEN, ROOM, MatrixTestServer, make_api, raw_url
from tests.adapters.api.inprocess import settings as api_settings

ROUTES = [
    "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}",
    "/_matrix/client/v3/rooms/{roomId}/read_markers",
    "/_matrix/client/v3/sync",
    "/_receipts/v1/rooms/{roomId}/receipts",
    "/healthz",
    "/readyz",
    "/metrics",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "PROPFIND", "X"]

# Characters a raw request-target may carry as they are (no space, '?', '#' or '/').
RAW_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#")
ESCAPES = st.sampled_from(["%", "%Z", "%ZZ", "%FF", "%C3", "%00", "%2F", "%25", "%0A", "%ED%A0%80"])
LONG = st.integers(250, 400).map(lambda n: "$" + "x" * n)


def segment() -> st.SearchStrategy[str]:
    """A raw (percent-encoded or not) path segment: valid IDs, near misses, garbage."""
    return st.one_of(
        st.sampled_from([ROOM, "!other:hs1", "$e1", "$e1:hs1", "m.read", "m.read.private"]),
        st.sampled_from(["m.fully_read", "main", "", ".", "..", "%21room%3Ahs1", "%24e1"]),
        LONG,
        st.text(RAW_CHARS, max_size=30),
        st.lists(st.one_of(st.text(RAW_CHARS, max_size=5), ESCAPES), max_size=6).map("".join),
        st.text(max_size=20).map(lambda t: quote(t, safe="")),
    )


VALID = {
    "{roomId}": st.sampled_from([ROOM, "!room%3Ahs1", "!other:hs1"]),
    "{receiptType}": st.sampled_from(["m.read", "m.read.private", "m.fully_read"]),
    "{eventId}": st.sampled_from(["$e1", "%24e1", "$e2:hs1"]),
}


@st.composite
def paths(draw: st.DrawFn) -> str:
    """Half the time a served route with valid parameters (so bodies and queries are read),
    else any segments."""
    template = draw(st.sampled_from([*ROUTES, "/{x}", "/_matrix/client/v3/{x}/{y}"]))
    valid = draw(st.booleans())
    parts = [
        (draw(VALID.get(p, segment())) if valid else draw(segment())) if p.startswith("{") else p
        for p in template.split("/")
    ]
    path = "/".join(parts)
    if not valid and draw(st.booleans()):
        path += draw(st.sampled_from(["/", "//", "/extra", "%2F"]))
    return path or "/"


QUERY_NAMES = ["since", "timeout", "access_token", "include_private", "filter", "x", ""]
QUERY_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1000", "1e3", "99999999999999999999", "true", "false"]),
    st.sampled_from(["tok-alice", ADMIN_TOKEN, "r", "rAAAA", Token((0,) * 8, (0,) * 8).encode()]),
    st.text(RAW_CHARS.filter(lambda c: c not in "&="), max_size=20),
    st.lists(st.one_of(st.text(RAW_CHARS, max_size=4), ESCAPES), max_size=5).map("".join),
    st.text(max_size=20).map(lambda t: quote(t, safe="")),
)


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_NAMES), QUERY_VALUES), max_size=4))
    return "&".join(f"{k}={v}" for k, v in pairs)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    out: dict[str, str] = {}
    auth = draw(
        st.one_of(
            st.sampled_from(["Bearer tok-alice", f"Bearer {ADMIN_TOKEN}"]),
            st.none(),
            st.sampled_from(["tok-alice", "tok-bob", ADMIN_TOKEN, "nope", ""]).flatmap(
                lambda t: st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", ""]).map(
                    lambda s: f"{s} {t}"
                )
            ),
            HEADER_TEXT,
        )
    )
    if auth is not None:
        out["Authorization"] = auth
    content_type = draw(
        st.sampled_from([None, "application/json", "text/plain", "multipart/form-data", "x/y"])
    )
    if content_type is not None:
        out["Content-Type"] = content_type
    name = draw(st.sampled_from(["X-Requested-With", "Origin", "Accept", "X-Forwarded-For"]))
    out[name] = draw(HEADER_TEXT)
    return out


def _json_text() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(),
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=8
    )


BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    _json_text().map(orjson.dumps),
    st.fixed_dictionaries(
        {},
        optional={
            "thread_id": st.one_of(st.text(max_size=300), LONG, _json_text()),
            "m.read": st.one_of(st.text(max_size=40), LONG, _json_text()),
            "m.read.private": st.text(max_size=40),
            "m.fully_read": st.one_of(st.sampled_from(["$e1", "$e2:hs1"]), _json_text()),
        },
    ).map(orjson.dumps),
    st.integers(60_000, 200_000).map(lambda n: b'{"thread_id": "' + b'"' * n + b'"}'),
    st.just(b"[" * 5000 + b"]" * 5000),
)


def test_no_client_input_gets_a_5xx(tmp_path: Path) -> None:
    s = api_settings(
        tmp_path,
        rate_limit_per_s=0,  # rate limits have tests of their own; here they would hide paths
        sync_rate_limit_per_s=0,
        auth_failure_rate_limit_per_s=0,
        sync_timeout_max_ms=0,
    )
    api, _ = make_api(s)
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(_start(api.app()))
    admin = loop.run_until_complete(_start(api.admin_app()))
    seen: set[int] = set()

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.booleans(), st.sampled_from(METHODS), paths(), queries(), headers(), BODIES)
    def one_request(
        to_admin: bool,
        method: str,
        path: str,
        query: str,
        request_headers: dict[str, str],
        body: bytes | None,
    ) -> None:
        target = path + ("?" + query if query else "")
        status, content_type, raw = loop.run_until_complete(
            _send(admin if to_admin else client, method, target, request_headers, body)
        )
        seen.add(status)
        assert status < 500, (status, method, target, raw[:200])
        if status >= 400:
            assert content_type == "application/json", (status, method, target, raw[:200])
            if method != "HEAD":
                answer = orjson.loads(raw)
                assert isinstance(answer.get("errcode"), str) and answer["errcode"].startswith(
                    "M_"
                ), (status, target, answer)
                assert isinstance(answer.get("error"), str)

    try:
        one_request()
        # Still serving, on both listeners.
        normal = f"/_matrix/client/v3/rooms/{ROOM}/receipt/m.read/$e1"
        status, _, raw = loop.run_until_complete(
            _send(client, "POST", normal, {"Authorization": "Bearer tok-alice"}, b"{}")
        )
        assert (status, raw) == (200, b"{}")
        view = f"/_receipts/v1/rooms/{ROOM}/receipts"
        status, _, _ = loop.run_until_complete(
            _send(admin, "GET", view, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, None)
        )
        assert status == 200
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(admin.close())
        loop.close()
    # The strategies reach both answers and refusals (not only the router's 404).
    assert seen & {200, 204} and 400 in seen, f"too little reached: {sorted(seen)}"


async def _start(app: Any) -> TestClient:
    client = TestClient(MatrixTestServer(app))
    await client.start_server()
    return client


async def _send(
    client: TestClient, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, str, bytes]:
    async with client.session.request(
        method, raw_url(client, target), headers=headers, data=body
    ) as resp:
        return resp.status, resp.content_type, await resp.read()
