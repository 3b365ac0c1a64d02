"""The HTTP API (CONTRACT §5): Matrix receipts, read markers, the receipts part of /sync,
the room receipts view, health, readiness and metrics. Handlers only parse, call the core
checks, and produce to Kafka or read the SyncIndex.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from receipt_streams.adapters.api.auth import TokenVerifier, VerifierUnavailable
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.config import Settings
from receipt_streams.core.client_api import (
    ApiError,
    ReceiptRequest,
    check_room_id,
    read_markers_request,
    receipt_request,
    refuse_if_not_joined,
)
from receipt_streams.core.ratelimit import RateLimiter
from receipt_streams.core.sync_view import BadToken, Token

log = logging.getLogger(__name__)

HTTP_LATENCY = Histogram(
    "receipt_streams_http_request_seconds", "HTTP request latency.", ["route", "method", "status"]
)
ACCEPTED = Counter(
    "receipt_streams_http_receipts_total",
    "Receipts accepted over HTTP (durably in Kafka), by type.",
    ["receipt_type"],
)

CLIENT = "/_matrix/client/v3"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def matrix_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error in the spec's `{"errcode", "error"}` shape; latency measured per route."""
    started = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _json(exc.body(), exc.status)
    except web.HTTPMethodNotAllowed as exc:
        response = _json(
            {"errcode": "M_UNRECOGNIZED", "error": f"{request.method} is not allowed here"},
            exc.status,
        )
    except web.HTTPNotFound:
        response = _json({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, 404)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        response = _json({"errcode": "M_UNKNOWN", "error": "Internal server error"}, 500)
    HTTP_LATENCY.labels(name, request.method, str(response.status)).observe(
        time.perf_counter() - started
    )
    return response


class Api:
    def __init__(
        self,
        settings: Settings,
        feed: SyncFeed,
        verifier: TokenVerifier,
        ready: Callable[[], bool],
        client: bool = True,
    ) -> None:
        self.s = settings
        self.client = client  # False: only health, readiness and metrics (a table worker)
        self.feed = feed
        self.verifier = verifier
        self.ready = ready
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.producer: AIOKafkaProducer | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[matrix_errors])
        if self.client:
            app.router.add_post(
                CLIENT + "/rooms/{roomId}/receipt/{receiptType}/{eventId}", self.post_receipt
            )
            app.router.add_post(CLIENT + "/rooms/{roomId}/read_markers", self.post_read_markers)
            app.router.add_get(CLIENT + "/sync", self.get_sync)
            app.router.add_get("/_receipts/v1/rooms/{roomId}/receipts", self.get_room_receipts)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        if not self.client:
            return
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.s.producer_linger_ms,
        )
        await self.producer.start()

    async def _stop(self, _: web.Application) -> None:
        if self.producer is not None:
            await self.producer.stop()
        close = getattr(self.verifier, "close", None)
        if close is not None:
            await close()

    # --- auth --------------------------------------------------------------------------

    async def _user(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = (
            header[7:].strip()
            if header.startswith("Bearer ")
            else request.query.get("access_token", "")
        )
        if not token:
            raise ApiError(401, "M_MISSING_TOKEN", "Missing access token")
        try:
            user = await self.verifier.user_for(token)
        except VerifierUnavailable as exc:
            log.warning("token verification unavailable", extra={"error": str(exc)})
            raise ApiError(503, "M_UNKNOWN", "Token verification is unavailable") from None
        if user is None:
            raise ApiError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token")
        return user

    def _rate_limit(self, user: str) -> None:
        wait_ms = self.limiter.check(user, time.monotonic())
        if wait_ms is not None:
            raise ApiError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=wait_ms)

    # --- receipts ----------------------------------------------------------------------

    async def _write(self, user: str, requests: list[ReceiptRequest]) -> web.Response:
        for r in requests:
            refuse_if_not_joined(self.feed.index.membership(r.room_id, user), user, r.room_id)
        assert self.producer is not None
        ts = int(time.time() * 1000)
        acks = []
        for r in requests:
            value: dict[str, Any] = {
                "room_id": r.room_id,
                "user_id": user,
                "receipt_type": r.receipt_type,
                "event_id": r.event_id,
                "ts": ts,
            }
            if r.thread_id is not None:
                value["thread_id"] = r.thread_id
            acks.append(
                await self.producer.send(
                    self.s.topic_client, orjson.dumps(value), key=r.room_id.encode()
                )
            )
        for ack in acks:
            await ack  # 200 only once the broker has it (acks=all)
        for r in requests:
            ACCEPTED.labels(r.receipt_type).inc()
        return _json({})

    async def post_receipt(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        self._rate_limit(user)
        m = request.match_info
        r = receipt_request(m["roomId"], m["receiptType"], m["eventId"], await request.read())
        return await self._write(user, [r])

    async def post_read_markers(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        self._rate_limit(user)
        requests = read_markers_request(request.match_info["roomId"], await request.read())
        return await self._write(user, requests)

    # --- reading -----------------------------------------------------------------------

    async def get_sync(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        since_raw = request.query.get("since")
        try:
            since = Token.decode(since_raw) if since_raw else None
            timeout_ms = int(request.query.get("timeout", "0"))
        except (BadToken, ValueError) as exc:
            raise ApiError(400, "M_INVALID_PARAM", str(exc)) from None
        timeout_s = min(max(timeout_ms, 0), self.s.sync_timeout_max_ms) / 1000
        deadline = time.monotonic() + timeout_s
        await self._wait_caught_up(deadline)
        while True:
            token = self.feed.index.token()  # before reading: nothing can fall between
            try:
                rooms = self.feed.index.sync(user, since)
            except BadToken as exc:
                raise ApiError(400, "M_INVALID_PARAM", str(exc)) from None
            left = deadline - time.monotonic()
            if rooms or since is None or left <= 0:
                return _json({"next_batch": token.encode(), "rooms": {"join": rooms}})
            await self.feed.wait_for_change(left)

    async def _wait_caught_up(self, deadline: float) -> None:
        if not self.feed.caught_up.is_set():
            left = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self.feed.caught_up.wait(), left or 30)
            except TimeoutError:
                raise ApiError(503, "M_UNKNOWN", "Receipts are still loading") from None

    async def get_room_receipts(self, request: web.Request) -> web.Response:
        room_id = check_room_id(request.match_info["roomId"])
        entries = [
            {
                "user_id": k.user_id,
                "receipt_type": k.receipt_type,
                "thread_id": k.thread_id,
                "event_id": v.event_id,
                "stream_pos": v.stream_pos,
                "ts": v.ts,
                "data": v.data,
            }
            for k, v in self.feed.index.room_receipts(room_id)
        ]
        entries.sort(key=lambda e: (e["user_id"], e["receipt_type"], e["thread_id"] or ""))
        return _json({"room_id": room_id, "receipts": entries})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        tables, view = self.ready(), self.feed.caught_up.is_set() or not self.client
        return _json(
            {"ready": tables and view, "tables": tables, "sync_view": view},
            200 if tables and view else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@contextlib.asynccontextmanager
async def serving(api: Api, s: Settings) -> AsyncIterator[None]:
    """Serve `api` on the configured host and port for the duration of the block."""
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, s.web_host, s.web_port).start()
    log.info(
        "HTTP API listening",
        extra={"host": s.web_host, "port": s.web_port, "client_api": api.client},
    )
    try:
        yield
    finally:
        await runner.cleanup()
