"""The HTTP rules of issue 12, in process (no broker): the admin listener and its tokens, the
client-server spec's answers to bad IDs, bodies, methods, CORS, and the rate limits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from aiokafka.errors import MessageSizeTooLargeError

from receipt_streams.adapters.parking import ParkedLog
from receipt_streams.adapters.supervise import STUCK_AFTER, LoopHealth
from receipt_streams.config import Settings
from tests.adapters.api.inprocess import (
    ADMIN_TOKEN,
    ROOM,
    clients,
    make_api,
    raw_url,
    settings,
)

C = "/_matrix/client/v3"
RECEIPT = f"{C}/rooms/{ROOM}/receipt/m.read/$e1"
MARKERS = f"{C}/rooms/{ROOM}/read_markers"
VIEW = f"/_receipts/v1/rooms/{ROOM}/receipts"
ALICE = {"Authorization": "Bearer tok-alice"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def call(
    client: TestClient,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """Send `path` exactly as written (no client re-quoting); status, JSON body, headers."""
    async with client.session.request(
        method, raw_url(client, path), data=body, headers=headers or {}
    ) as resp:
        raw = await resp.read()
        is_json = resp.content_type == "application/json"
        return resp.status, orjson.loads(raw) if is_json else raw, resp.headers


async def test_admin_view_needs_an_admin_token_and_hides_private_receipts(
    tmp_path: Path,
) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, admin):
        status, body, _ = await call(client, "GET", VIEW, headers=ADMIN)
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED"), "not on the client port"
        for headers, errcode in [
            ({}, "M_MISSING_TOKEN"),
            ({"Authorization": "Bearer wrong"}, "M_UNKNOWN_TOKEN"),
            (ALICE, "M_UNKNOWN_TOKEN"),  # a Matrix user's token is no admin token
        ]:
            status, body, _ = await call(admin, "GET", VIEW, headers=headers)
            assert (status, body["errcode"]) == (401, errcode)
        status, body, _ = await call(admin, "GET", VIEW, headers=ADMIN)
        assert status == 200 and body["room_id"] == ROOM
        assert [(e["user_id"], e["receipt_type"]) for e in body["receipts"]] == [
            ("@alice:hs1", "m.read")
        ]
        status, body, _ = await call(admin, "GET", VIEW + "?include_private=true", headers=ADMIN)
        assert status == 200
        assert [(e["user_id"], e["receipt_type"], e["event_id"]) for e in body["receipts"]] == [
            ("@alice:hs1", "m.read", "$e1"),
            ("@alice:hs1", "m.read.private", "$e2"),
            ("@bob:hs1", "m.fully_read", "$e1"),
        ]
        status, body, _ = await call(admin, "GET", VIEW + "?include_private=yes", headers=ADMIN)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body, _ = await call(admin, "GET", "/_receipts/v1/rooms/bad/receipts", None, ADMIN)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body, _ = await call(admin, "POST", RECEIPT, b"{}", ALICE)
        assert status == 404, "no client API on the admin listener"


async def test_without_an_admin_tokens_file_the_view_refuses_everyone(tmp_path: Path) -> None:
    api, _ = make_api(Settings(server_name="hs1", data_dir=tmp_path, read_store="memory"))
    async with clients(api) as (_, admin):
        status, body, _ = await call(admin, "GET", VIEW, headers=ADMIN)
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


@pytest.mark.parametrize("client_api", [True, False])
async def test_client_port_probes_carry_status_only_and_metrics_are_admin_only(
    tmp_path: Path, client_api: bool
) -> None:
    api, _ = make_api(settings(tmp_path))
    api.client = client_api
    async with clients(api) as (client, admin):
        for listener in (client, admin):
            assert (await call(listener, "GET", "/healthz"))[:2] == (200, {"status": "ok"})
        assert (await call(client, "GET", "/readyz"))[:2] == (200, {"ready": True})
        status, body, _ = await call(admin, "GET", "/readyz")
        assert status == 200 and body["ready"] is True and "parked" in body
        status, body, _ = await call(client, "GET", "/metrics")
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED"), "no metrics to clients"
        status, text, _ = await call(admin, "GET", "/metrics")
        assert status == 200 and b"receipt_streams_http_request_seconds" in text
        status, _, _ = await call(admin, "GET", VIEW, headers=ADMIN)
        assert status == (200 if client_api else 404), "the view only where the feed runs"


async def test_readyz_is_503_with_the_reason_while_a_loop_is_stuck(tmp_path: Path) -> None:
    """The reason on the admin listener; the client port says not ready, and nothing more."""
    api, _ = make_api(settings(tmp_path))
    health = LoopHealth.of("t-stuck-fold")
    try:
        for _ in range(STUCK_AFTER):
            health.failed(RuntimeError("batch failed"))
        async with clients(api) as (client, admin):
            status, body, _ = await call(admin, "GET", "/readyz")
            assert status == 503 and body["ready"] is False
            why = f"failed {STUCK_AFTER} times in a row: RuntimeError('batch failed')"
            assert body["stuck"] == [f"t-stuck-fold {why}"]
            assert (await call(client, "GET", "/readyz"))[:2] == (503, {"ready": False})
            health.succeeded()
            status, body, _ = await call(admin, "GET", "/readyz")
            assert status == 200 and body["stuck"] == []
            assert (await call(client, "GET", "/readyz"))[:2] == (200, {"ready": True})
    finally:
        LoopHealth.registry.pop("t-stuck-fold", None)


async def test_readyz_shows_parked_records_and_stays_200(tmp_path: Path) -> None:
    """Parking is how a loop recovers: shown (count, last reason), never a 503."""
    api, _ = make_api(settings(tmp_path))
    ParkedLog.clear()
    try:
        record = SimpleNamespace(topic="t.client", partition=1, offset=7, key=None, value=b"x")
        ParkedLog.input_parked(record, MessageSizeTooLargeError())
        async with clients(api) as (client, admin):
            status, body, _ = await call(admin, "GET", "/readyz")
            assert status == 200 and body["ready"] is True
            parked = body["parked"]
            assert (parked["recent"], parked["total"]) == (1, 1)
            last = parked["last"]
            assert (last["reason"], last["topic"], last["offset"]) == (
                "unproducible",
                "t.client",
                7,
            )
            status, raw, _ = await call(client, "GET", "/readyz")
            assert (status, raw) == (200, {"ready": True}), "no record detail to clients"
    finally:
        ParkedLog.clear()


BAD_PATHS = [
    f"{C}/rooms/notaroom/receipt/m.read/$e1",
    f"{C}/rooms/{ROOM}/receipt/m.read/noevent",
    f"{C}/rooms/!room%ZZ:hs1/receipt/m.read/$e1",  # invalid percent-encoding
    f"{C}/rooms/!room%:hs1/receipt/m.read/$e1",
    f"{C}/rooms/!room%FF:hs1/receipt/m.read/$e1",  # invalid UTF-8
    f"{C}/rooms/{ROOM}/receipt/m.read/$e%C3",
    f"{C}/rooms/{ROOM}/receipt/m.read/$e%00",  # a control character
    f"{C}/rooms/{ROOM}/receipt/m.read/$" + "x" * 300,
    f"{C}/rooms/%21" + "r" * 300 + "/receipt/m.read/$e1",
    f"{C}/rooms/!r%ZZ/read_markers",
    f"{C}/sync?since=%ZZ",
    f"{C}/sync?timeout=%FF",
    f"{C}/sync?timeout=soon",
    f"{C}/sync?since=garbage",
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_bad_ids_and_escapes_are_invalid_params(tmp_path: Path, path: str) -> None:
    api, producer = make_api(settings(tmp_path))
    method = "GET" if "/sync" in path else "POST"
    async with clients(api) as (client, _):
        status, body, _ = await call(client, method, path, b"{}", ALICE)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert producer.sent == []


@pytest.mark.parametrize(
    "thread_id",
    ["x" * 300, "$" + "x" * 300, "$" + "x" * 60_000, "$a\x01b", "$a\nb", '"""', "", "main\x00"],
)
async def test_bad_thread_ids_are_invalid_params(tmp_path: Path, thread_id: str) -> None:
    api, producer = make_api(settings(tmp_path))
    async with clients(api) as (client, _):
        body = orjson.dumps({"thread_id": thread_id})
        status, answer, _ = await call(client, "POST", RECEIPT, body, ALICE)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert producer.sent == []


async def test_a_valid_thread_is_written(tmp_path: Path) -> None:
    api, producer = make_api(settings(tmp_path))
    async with clients(api) as (client, _):
        body = orjson.dumps({"thread_id": "$root:hs1"})
        assert (await call(client, "POST", RECEIPT, body, ALICE))[:2] == (200, {})
        encoded = f"{C}/rooms/!room%3Ahs1/receipt/m.read/%24e%2F1"
        assert (await call(client, "POST", encoded, b"{}", ALICE))[:2] == (200, {})
    assert [(v["event_id"], v.get("thread_id")) for _, v, _ in producer.sent] == [
        ("$e1", "$root:hs1"),
        ("$e/1", None),
    ]


@pytest.mark.parametrize("size", [65_537, 1_000_000, 5_000_000])
async def test_bodies_over_the_limit_are_json_413(tmp_path: Path, size: int) -> None:
    api, producer = make_api(settings(tmp_path))
    body = b'{"thread_id": "' + b'"' * (size - 17) + b'"}'
    async with clients(api) as (client, _):
        for path in (RECEIPT, MARKERS):
            status, answer, _ = await call(client, "POST", path, body, ALICE)
            assert (status, answer["errcode"]) == (413, "M_TOO_LARGE")

            async def chunks() -> Any:  # no Content-Length: the limit holds while reading
                for _ in range(size // 65_536 + 1):
                    yield b" " * 65_536

            async with client.session.post(
                raw_url(client, path), data=chunks(), headers=ALICE
            ) as resp:
                answer = await resp.json()
                assert (resp.status, answer["errcode"]) == (413, "M_TOO_LARGE")
    assert producer.sent == []


async def test_cors_headers_and_preflight_without_auth(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, _):
        for path in (RECEIPT, MARKERS, f"{C}/sync", "/healthz"):
            status, _, headers = await call(client, "OPTIONS", path)
            assert status == 204, path
            assert headers["Access-Control-Allow-Origin"] == "*"
            assert "OPTIONS" in headers["Access-Control-Allow-Methods"]
            assert headers["Access-Control-Allow-Headers"] == (
                "X-Requested-With, Content-Type, Authorization"
            )
        for method, path, headers in [
            ("POST", RECEIPT, ALICE),
            ("POST", RECEIPT, {}),
            ("GET", "/nowhere", {}),
            ("OPTIONS", "/nowhere", {}),
        ]:
            _, _, answer_headers = await call(client, method, path, b"{}", headers)
            assert answer_headers["Access-Control-Allow-Origin"] == "*", (method, path)


async def test_405_says_what_is_allowed(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, admin):
        status, body, headers = await call(client, "GET", RECEIPT, None, ALICE)
        assert (status, body["errcode"]) == (405, "M_UNRECOGNIZED")
        assert set(headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
        status, body, headers = await call(client, "DELETE", f"{C}/sync", None, ALICE)
        assert status == 405 and set(headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
        status, body, headers = await call(admin, "POST", VIEW, None, ADMIN)
        assert status == 405 and set(headers["Allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(tmp_path: Path, scheme: str) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, admin):
        headers = {"Authorization": f"{scheme} tok-alice"}
        assert (await call(client, "POST", RECEIPT, b"{}", headers))[:2] == (200, {})
        admin_headers = {"Authorization": f"{scheme} {ADMIN_TOKEN}"}
        assert (await call(admin, "GET", VIEW, None, admin_headers))[0] == 200


async def test_sync_is_rate_limited_per_user(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path, sync_rate_limit_per_s=0.5, sync_rate_limit_burst=3))
    async with clients(api) as (client, _):
        statuses = [(await call(client, "GET", f"{C}/sync", None, ALICE)) for _ in range(5)]
        assert [s for s, _, _ in statuses] == [200, 200, 200, 429, 429]
        _, body, headers = statuses[3]
        assert body["errcode"] == "M_LIMIT_EXCEEDED" and 0 < body["retry_after_ms"] <= 2000
        assert int(headers["Retry-After"]) >= 1
        bob = {"Authorization": "Bearer tok-bob"}
        assert (await call(client, "GET", f"{C}/sync", None, bob))[0] == 200, "per user"


async def test_failed_authentication_is_rate_limited_per_address(tmp_path: Path) -> None:
    api, _ = make_api(
        settings(tmp_path, auth_failure_rate_limit_per_s=0.1, auth_failure_rate_limit_burst=3)
    )
    async with clients(api) as (client, admin):
        wrong = {"Authorization": "Bearer guess"}
        first = [(await call(client, "POST", RECEIPT, b"{}", wrong))[:2] for _ in range(3)]
        assert [(s, b["errcode"]) for s, b in first] == [(401, "M_UNKNOWN_TOKEN")] * 3
        for listener, path, headers in [
            (client, RECEIPT, wrong),
            (client, RECEIPT, ALICE),  # even a good token: the address is locked out a while
            (client, f"{C}/sync", ALICE),
            (admin, VIEW, ADMIN),
        ]:
            method = "POST" if path == RECEIPT else "GET"
            status, body, _ = await call(listener, method, path, b"{}", headers)
            assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), path
            assert 0 < body["retry_after_ms"] <= 10_000
        assert (await call(client, "GET", "/healthz"))[0] == 200, "health needs no auth"
        # Missing tokens cost a verifier nothing and are not counted.
    api, _ = make_api(
        settings(tmp_path, auth_failure_rate_limit_per_s=0.1, auth_failure_rate_limit_burst=3)
    )
    async with clients(api) as (client, _):
        for _ in range(5):
            status, body, _ = await call(client, "POST", RECEIPT, b"{}")
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        assert (await call(client, "POST", RECEIPT, b"{}", ALICE))[0] == 200


async def test_behind_a_trusted_proxy_the_limit_counts_the_forwarded_client(
    tmp_path: Path,
) -> None:
    """Every request comes from the proxy (the test client's 127.0.0.1): with it trusted, one
    client's guesses lock that client out, not everyone behind the proxy."""
    api, _ = make_api(
        settings(
            tmp_path,
            auth_failure_rate_limit_per_s=0.1,
            auth_failure_rate_limit_burst=3,
            trusted_proxies="127.0.0.0/8, ::1",
        )
    )
    async with clients(api) as (client, _):
        guesser = {"Authorization": "Bearer guess", "X-Forwarded-For": "203.0.113.9"}
        for _ in range(3):
            assert (await call(client, "POST", RECEIPT, b"{}", guesser))[0] == 401
        assert (await call(client, "POST", RECEIPT, b"{}", guesser))[0] == 429
        # A client writing the guesser's address first gains nothing: the proxy appends.
        spoof = {**guesser, "X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        assert (await call(client, "POST", RECEIPT, b"{}", spoof))[0] == 429
        alice = {**ALICE, "X-Forwarded-For": "198.51.100.7"}
        assert (await call(client, "POST", RECEIPT, b"{}", alice))[0] == 200


@pytest.mark.parametrize(
    "token",
    ["a" * 5000, "tok\x01", "tök"],
)
async def test_implausible_tokens_are_unknown_without_asking(tmp_path: Path, token: str) -> None:
    api, _ = make_api(settings(tmp_path))
    asked: list[str] = []

    class Recording:
        async def user_for(self, t: str) -> str | None:
            asked.append(t)
            return None

    api.verifier = Recording()
    async with clients(api) as (client, _):
        status, body, _ = await call(client, "GET", f"{C}/sync?access_token=" + _quote(token))
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert asked == []


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@pytest.mark.parametrize(
    "request_head, status, errcode",
    [
        (b"X / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "M_UNRECOGNIZED"),  # the parser's own 400
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 400, None),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 400, None),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", 400, "M_UNRECOGNIZED"),
    ],
)
async def test_requests_the_parser_refuses_get_matrix_errors_too(
    tmp_path: Path, request_head: bytes, status: int, errcode: str | None
) -> None:
    import asyncio

    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, _):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request_head)
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert b"content-type: application/json" in head.lower()
    answer = orjson.loads(body)
    assert answer["errcode"] == (errcode or answer["errcode"]) and answer["errcode"].startswith(
        "M_"
    )


def _answers(status_prefix: str = "") -> float:
    from receipt_streams.adapters.api.app import HTTP_LATENCY

    return sum(
        sample.value
        for metric in HTTP_LATENCY.collect()
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels["status"].startswith(status_prefix)
    )


@pytest.mark.parametrize("path", [RECEIPT, MARKERS, "/_matrix/client/v4/sync"])
async def test_a_client_gone_before_its_body_is_no_server_error(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that announces a body and hangs up before sending it all (seen in the issue 12
    probe) is its own fault: no ERROR traceback, no 5xx in the latency metric. On the
    production listener (`serving`): unlike aiohttp's test server, it does not cancel the
    handler of a lost connection, the body read fails instead."""
    import asyncio

    from receipt_streams.adapters.api.app import serving
    from receipt_streams.bench.process import free_port

    s = settings(tmp_path, web_port=free_port(), admin_port=free_port())
    answered, failed = _answers(), _answers("5")
    api, producer = make_api(s)
    async with serving(api, s):
        reader, writer = await asyncio.open_connection("127.0.0.1", s.web_port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok-alice\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler now waits for the rest of the body
        writer.close()
        for _ in range(100):  # until the server has noticed and answered (to nobody)
            if _answers() > answered:
                break
            await asyncio.sleep(0.05)
        assert _answers() == answered + 1
        reader, writer = await asyncio.open_connection("127.0.0.1", s.web_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert _answers("5") == failed
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert producer.sent == []


async def test_a_connection_without_a_complete_request_is_closed_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow clients (the issue 12 probe): a header trickled, or nothing sent at all, held a
    connection and its file descriptor for aiohttp's 3,630 s; now for `IDLE_TIMEOUT_S`."""
    import asyncio
    import time

    from receipt_streams.adapters.api import protocol
    from receipt_streams.adapters.api.app import serving
    from receipt_streams.bench.process import free_port

    assert protocol.IDLE_TIMEOUT_S == 75.0
    monkeypatch.setattr(protocol, "IDLE_TIMEOUT_S", 0.5)
    s = settings(tmp_path, web_port=free_port(), admin_port=free_port())
    api, _ = make_api(s)
    async with serving(api, s):
        for port in (s.web_port, s.admin_port):
            for head in (b"", b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: a"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                started = time.monotonic()
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
                assert time.monotonic() - started < 5
                writer.close()


async def test_a_body_not_sent_in_time_gets_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client trickling its body holds the request at most `BODY_TIMEOUT_S`."""
    import asyncio

    from receipt_streams.adapters.api import app
    from receipt_streams.bench.process import free_port

    assert app.BODY_TIMEOUT_S == 30.0
    monkeypatch.setattr(app, "BODY_TIMEOUT_S", 0.5)
    s = settings(tmp_path, web_port=free_port(), admin_port=free_port())
    api, producer = make_api(s)
    async with app.serving(api, s):
        reader, writer = await asyncio.open_connection("127.0.0.1", s.web_port)
        writer.write(
            f"POST {RECEIPT} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok-alice\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        body = orjson.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        assert body["errcode"] == "M_UNKNOWN"
        writer.close()
    assert producer.sent == []


async def _refused() -> float:
    from receipt_streams.adapters.api.protocol import REFUSED_CONNECTIONS

    return REFUSED_CONNECTIONS._value.get()


@pytest.mark.parametrize("linger", [True, False])
async def test_connections_over_the_cap_get_503_at_once_and_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linger: bool
) -> None:
    """Open connections to the client listener are capped (issue 12): one more is answered
    with 503 `M_LIMIT_EXCEEDED` before it sends anything, and closed (half-closed first, or,
    with too many refused ones lingering, at once); once one closes, a new one is served.
    The admin listener is not capped."""
    import asyncio

    from receipt_streams.adapters.api import protocol
    from receipt_streams.adapters.api.app import serving
    from receipt_streams.adapters.api.protocol import OPEN_CONNECTIONS
    from receipt_streams.bench.process import free_port

    if not linger:
        monkeypatch.setattr(protocol, "REFUSED_LINGERING", 0)

    s = settings(tmp_path, web_port=free_port(), admin_port=free_port(), http_max_connections=3)
    api, _ = make_api(s)
    refused = await _refused()
    opened = OPEN_CONNECTIONS._value.get()
    async with serving(api, s):
        idle = [await asyncio.open_connection("127.0.0.1", s.web_port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", s.web_port)
        raw = await asyncio.wait_for(reader.read(), 5)  # nothing sent: answered, then EOF
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: 1" in head.lower()
        assert orjson.loads(body)["errcode"] == "M_LIMIT_EXCEEDED"
        assert await _refused() == refused + 1
        assert protocol._Refusal.lingering in (0, 1) if linger else protocol._Refusal.lingering == 0
        assert OPEN_CONNECTIONS._value.get() == opened + 3
        for _ in range(5):  # the admin listener is not capped
            a_reader, a_writer = await asyncio.open_connection("127.0.0.1", s.admin_port)
            a_writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(a_reader.read(), 5)).startswith(b"HTTP/1.1 200")
            a_writer.close()
        idle[0][1].close()
        await idle[0][1].wait_closed()
        for _ in range(100):  # until the server has seen it go
            if OPEN_CONNECTIONS._value.get() == opened + 2:
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.web_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        for _, w in idle[1:]:
            w.close()
    assert await _refused() == refused + 1


def test_the_connection_cap_fits_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cap the open-file limit cannot hold is lowered (once, a WARNING, no ERROR) after the
    soft limit is raised as far as the hard one allows."""
    import resource

    from receipt_streams.adapters.api import protocol

    limits = {"soft": 2048, "hard": 3000}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        limits["soft"] = value[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    caplog.set_level("INFO")
    assert protocol.connection_cap(4096) == 3000 - 1024
    assert limits["soft"] == 3000, "raised to the hard limit first"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    limits.update(soft=1_000_000, hard=1_000_000)
    assert protocol.connection_cap(4096) == 4096
    limits.update(soft=100, hard=100)
    assert protocol.connection_cap(4096) == 50, "half of a small limit kept for the rest"
