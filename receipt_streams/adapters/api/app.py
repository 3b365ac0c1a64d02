"""The HTTP API (CONTRACT §5). Two listeners: the client port (Matrix receipts, read markers,
the receipts part of /sync, health, readiness without detail; at most `http_max_connections`
open connections) and the admin listener (the room receipts view behind admin tokens, health,
readiness with its detail, metrics). Handlers only parse, call the
core checks, and produce to Kafka or read the SyncIndex. Whatever a client sends, the answer is
a Matrix error body, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from receipt_streams.adapters.api.auth import TokenVerifier, VerifierUnavailable, admin_tokens_for
from receipt_streams.adapters.api.client_address import client_address
from receipt_streams.adapters.api.protocol import MatrixAppRunner, connection_cap
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.adapters.collector import freeze_when_ready
from receipt_streams.adapters.idempotent_producer import IdempotentProducer
from receipt_streams.adapters.parking import ParkedLog
from receipt_streams.adapters.supervise import LoopHealth
from receipt_streams.config import Settings, parse_networks
from receipt_streams.core.client_api import (
    ApiError,
    ReceiptRequest,
    bearer_token,
    check_room_id,
    parse_flag,
    path_params,
    plausible_token,
    query_params,
    read_markers_request,
    receipt_request,
    refuse_if_not_joined,
)
from receipt_streams.core.ratelimit import RateLimiter
from receipt_streams.core.sliding_sync import (
    PREVIOUSLY,
    Connections,
    Pos,
    RoomRequest,
    State,
    UnknownPos,
    answer,
    resolve,
)
from receipt_streams.core.sliding_sync_requests import client_request, internal_request
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

SLIDING_CONNECTIONS = Gauge(
    "receipt_streams_sliding_sync_connections", "Sliding-sync connections whose state is kept."
)
UNKNOWN_POS = Counter(
    "receipt_streams_sliding_sync_unknown_pos_total",
    "Sliding-sync requests answered M_UNKNOWN_POS (the client starts a new connection).",
)

CLIENT = "/_matrix/client/v3"
RECEIPTS_VIEW = "/_receipts/v1/rooms/{roomId}/receipts"
SLIDING_INTERNAL = "/_receipts/v1/sliding_sync"
SLIDING_CLIENT = (
    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
    "/_matrix/client/v4/sync",
)
# The client-server spec's CORS headers ("Web Browser Clients"), on every client response.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
QUERY = web.RequestKey("query", dict)  # the strictly decoded query string, parsed once
# A request body (at most `HTTP_MAX_BODY_BYTES`) must arrive within this many seconds of its
# headers, or the request gets 408: a client trickling its body holds a connection no longer.
BODY_TIMEOUT_S = 30.0
# Metric label values stay bounded whatever method a client invents.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, errcode: str, error: str) -> web.Response:
    return _json({"errcode": errcode, "error": error}, status)


def _api_error(exc: ApiError) -> web.Response:
    response = _json(exc.body(), exc.status)
    if exc.retry_after_ms is not None:
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after_ms / 1000))
    return response


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
        response = _api_error(exc)
    except web.HTTPMethodNotAllowed as exc:
        response = _error(405, "M_UNRECOGNIZED", "Method not allowed here")
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except web.HTTPNotFound:
        response = _error(404, "M_UNRECOGNIZED", "Unrecognized request")
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, "M_TOO_LARGE", "Request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, "M_UNKNOWN", exc.reason)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        response = _error(500, "M_UNKNOWN", "Internal server error")
    method = request.method if request.method in _METHODS else "other"
    HTTP_LATENCY.labels(name, method, str(response.status)).observe(time.perf_counter() - started)
    return response


@web.middleware
async def cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS headers on every client answer; a pre-flight OPTIONS to any served path gets 204
    without authentication."""
    unmatched = request.match_info.http_exception
    if request.method == "OPTIONS" and not isinstance(unmatched, web.HTTPNotFound):
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
        if response.status == 405 and "Allow" in response.headers:
            response.headers["Allow"] += ", OPTIONS"
    response.headers.update(CORS_HEADERS)
    return response


class Api:
    def __init__(
        self,
        settings: Settings,
        feed: SyncFeed,
        verifier: TokenVerifier,
        ready: Callable[[], bool],
        client: bool = True,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.s = settings
        self.client = client  # False: only health, readiness and metrics (a table worker)
        self.feed = feed
        self.verifier = verifier
        self.admin_tokens = admin_tokens_for(settings)
        self.ready = ready
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.sync_limiter = RateLimiter(
            settings.sync_rate_limit_per_s, settings.sync_rate_limit_burst
        )
        self.auth_failures = RateLimiter(
            settings.auth_failure_rate_limit_per_s, settings.auth_failure_rate_limit_burst
        )
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.producer = producer  # given: already started (tests); else one of its own
        self.connections = Connections(
            settings.sliding_sync_connections,
            settings.sliding_sync_connection_ttl_s,
            settings.sliding_sync_rooms_per_connection,
        )

    def app(self) -> web.Application:
        """The client listener: what a Matrix client may see, and health."""
        app = web.Application(
            middlewares=[cors, matrix_errors], client_max_size=self.s.http_max_body_bytes
        )
        if self.client:
            app.router.add_post(
                CLIENT + "/rooms/{roomId}/receipt/{receiptType}/{eventId}", self.post_receipt
            )
            app.router.add_post(CLIENT + "/rooms/{roomId}/read_markers", self.post_read_markers)
            app.router.add_get(CLIENT + "/sync", self.get_sync)
            for path in SLIDING_CLIENT:
                app.router.add_post(path, self.post_sliding_sync)
        # Status only: what is stuck or parked (record errors, topics) is for operators.
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.client_readyz)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def admin_app(self) -> web.Application:
        """The admin listener: the room receipts view (where the sync view is fed), health,
        readiness with its detail, metrics (these three without a token, like the client
        port's probes; the data routes need an admin token)."""
        app = web.Application(
            middlewares=[matrix_errors], client_max_size=self.s.http_max_body_bytes
        )
        if self.client:
            app.router.add_get(RECEIPTS_VIEW, self.get_room_receipts)
            app.router.add_post(SLIDING_INTERNAL, self.post_sliding_receipts)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def _start(self, _: web.Application) -> None:
        if not self.client or self.producer is not None:
            return
        # One receipt the broker refused must not leave its partition refusing the rest.
        self.producer = IdempotentProducer(
            bootstrap_servers=self.s.bootstrap_servers, linger_ms=self.s.producer_linger_ms
        )
        await self.producer.start()

    async def _stop(self, _: web.Application) -> None:
        if self.producer is not None:
            await self.producer.stop()
        close = getattr(self.verifier, "close", None)
        if close is not None:
            await close()

    # --- the request line ----------------------------------------------------------------

    @staticmethod
    def _params(request: web.Request) -> dict[str, str]:
        """Path parameters, strictly decoded (not aiohttp's lenient match_info)."""
        resource = request.match_info.route.resource
        assert resource is not None
        return path_params(resource.canonical, request.rel_url.raw_path)

    @staticmethod
    def _query(request: web.Request) -> dict[str, str]:
        if QUERY not in request:
            request[QUERY] = query_params(request.rel_url.raw_query_string)
        return request[QUERY]

    async def _body(self, request: web.Request) -> bytes:
        limit = self.s.http_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "M_TOO_LARGE", f"Request body over {limit} bytes")
        try:
            if request.content.is_eof():  # all of it arrived with the headers: no wait to bound
                return await request.read()
            async with asyncio.timeout(BODY_TIMEOUT_S):
                return await request.read()
        except TimeoutError:
            raise ApiError(
                408, "M_UNKNOWN", f"Request body not sent within {BODY_TIMEOUT_S} s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, "M_TOO_LARGE", f"Request body over {limit} bytes") from None
        except ConnectionError:
            # The client went away before sending the body it announced: its fault, not ours
            # (no 500 in the metrics, no ERROR traceback in the log); nobody reads the answer.
            raise ApiError(400, "M_NOT_JSON", "Request body incomplete") from None

    # --- auth --------------------------------------------------------------------------

    def _token(self, request: web.Request) -> str:
        """The bearer token, once the caller's address is not locked out by failed attempts."""
        wait_ms = self.auth_failures.wait_ms(self._address(request), time.monotonic())
        if wait_ms is not None:
            raise ApiError(
                429, "M_LIMIT_EXCEEDED", "Too many failed authentications", retry_after_ms=wait_ms
            )
        token = bearer_token(
            request.headers.get("Authorization"), self._query(request).get("access_token")
        )
        if token is None:
            raise ApiError(401, "M_MISSING_TOKEN", "Missing access token")
        return token

    def _refuse_token(self, request: web.Request) -> ApiError:
        self.auth_failures.check(self._address(request), time.monotonic())
        return ApiError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token")

    def _address(self, request: web.Request) -> str:
        forwarded = request.headers.get("X-Forwarded-For")
        return client_address(request.remote, forwarded, self.trusted_proxies)

    async def _user(self, request: web.Request) -> str:
        token = self._token(request)
        if not plausible_token(token):
            raise self._refuse_token(request)
        try:
            user = await self.verifier.user_for(token)
        except VerifierUnavailable as exc:
            log.warning("token verification unavailable", extra={"error": str(exc)})
            raise ApiError(503, "M_UNKNOWN", "Token verification is unavailable") from None
        if user is None:
            raise self._refuse_token(request)
        return user

    def _admin(self, request: web.Request) -> None:
        if not self.admin_tokens.allows(self._token(request)):
            raise self._refuse_token(request)

    @staticmethod
    def _rate_limit(limiter: RateLimiter, user: str) -> None:
        wait_ms = limiter.check(user, time.monotonic())
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
        self._rate_limit(self.limiter, user)
        m = self._params(request)
        body = await self._body(request)
        r = receipt_request(m["roomId"], m["receiptType"], m["eventId"], body)
        return await self._write(user, [r])

    async def post_read_markers(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        self._rate_limit(self.limiter, user)
        room_id = self._params(request)["roomId"]
        requests = read_markers_request(room_id, await self._body(request))
        return await self._write(user, requests)

    # --- reading -----------------------------------------------------------------------

    async def get_sync(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        self._rate_limit(self.sync_limiter, user)
        query = self._query(request)
        since_raw = query.get("since")
        try:
            since = Token.decode(since_raw) if since_raw else None
            timeout_ms = int(query.get("timeout") or "0")
        except (BadToken, ValueError) as exc:
            raise ApiError(400, "M_INVALID_PARAM", str(exc)[:200]) from None
        timeout_s = min(max(timeout_ms, 0), self.s.sync_timeout_max_ms) / 1000
        deadline = time.monotonic() + timeout_s
        await self._wait_caught_up(deadline)
        if since is not None:
            self._check_layout(since, BadToken("token is for another partition layout"))
            if not await self.feed.wait_until(since, deadline):
                # Behind the token (another process handed it out): nothing new yet, never less.
                return _json({"next_batch": since_raw, "rooms": {"join": {}}})
        while True:
            token = self.feed.index.token()  # before reading: nothing can fall between
            try:
                rooms = self.feed.index.sync(user, since)
            except BadToken as exc:
                raise ApiError(400, "M_INVALID_PARAM", str(exc)[:200]) from None
            left = deadline - time.monotonic()
            if rooms or since is None or left <= 0:
                return _json({"next_batch": token.encode(), "rooms": {"join": rooms}})
            await self.feed.wait_for_change(left)

    def _check_layout(self, token: Token, error: Exception) -> None:
        index = self.feed.index
        if (
            len(token.receipts) != index.receipt_partitions
            or len(token.members) != index.member_partitions
        ):
            if isinstance(error, BadToken):
                raise ApiError(400, "M_INVALID_PARAM", str(error))
            raise error

    def _deadline(self, timeout_ms: int) -> float:
        return time.monotonic() + min(timeout_ms, self.s.sync_timeout_max_ms) / 1000

    async def post_sliding_receipts(self, request: web.Request) -> web.Response:
        """The homeserver's sliding-sync handler, per response: the `extensions.receipts`
        part for the rooms it sends, and the positions to remember."""
        self._admin(request)
        req = internal_request(await self._body(request))
        deadline = self._deadline(req.timeout_ms)
        await self._wait_caught_up(deadline)
        keeps_state = req.live_rooms is not None or bool(
            req.rooms and all(r.initial or r.status is not None for r in req.rooms.values())
        )
        state = self._sliding_state(req.user_id, req.conn_id, req.pos, keeps_state)
        needed = [r.status.since for r in req.rooms.values() if r.status and r.status.since]
        if not await self._reach(state, needed, deadline):
            return _json({"pos": req.pos, "receipts": {"rooms": {}}, "cases": {}, "remember": {}})
        ans = answer(
            self.feed.index,
            req.user_id,
            state,
            req.rooms,
            req.live_rooms or (),
        )
        pos = Pos.new(ans.state.token).encode()
        self.connections.put(req.user_id, req.conn_id, pos, ans.state)
        SLIDING_CONNECTIONS.set(len(self.connections))
        remember: dict[str, Any] = {room: {"status": "live"} for room in req.rooms}
        for room, since in ans.demoted.items():
            remember[room] = {"status": PREVIOUSLY, "since": since.encode()}
        return _json(
            {
                "pos": pos,
                "receipts": {"rooms": ans.receipts},
                "cases": ans.cases,
                "remember": remember,
            }
        )

    async def post_sliding_sync(self, request: web.Request) -> web.Response:
        """Client-facing simplified sliding sync (MSC4186), for the rooms given explicitly
        (`room_subscriptions`): only `extensions.receipts` is filled in."""
        user = await self._user(request)
        self._rate_limit(self.sync_limiter, user)
        query = self._query(request)
        pos = query.get("pos") or None
        try:
            timeout_ms = max(0, int(query.get("timeout") or "0"))
        except ValueError:
            raise ApiError(400, "M_INVALID_PARAM", "timeout must be an integer") from None
        req = client_request(await self._body(request))
        deadline = self._deadline(timeout_ms)
        await self._wait_caught_up(deadline)
        state = self._sliding_state(user, req.conn_id, pos, False)
        if not await self._reach(state, [], deadline):
            return _json({"pos": pos, "lists": {}, "rooms": {}, "extensions": {}})
        enabled = state.enabled if req.enabled is None else req.enabled
        state = State(state.token, state.rooms, enabled)
        cap = self.s.sliding_sync_timeline_events
        while True:
            index = self.feed.index
            asked = [
                (room_id, limit)
                for room_id, limit in (req.subscriptions.items() if enabled else ())
                if req.rooms is None or room_id in req.rooms
            ]
            newest = max((min(limit, cap) for _, limit in asked), default=0)
            heads = index.user_rooms(user, [room_id for room_id, _ in asked], newest)
            rooms: dict[str, RoomRequest] = {}
            for (room_id, limit), head in zip(asked, heads, strict=True):
                if head.membership != "join":
                    continue  # never another room's receipts
                sent = state.rooms.get(room_id)
                before = sent.timeline_limit if sent is not None else None
                expanded = before is not None and limit > before
                fresh = sent is None or expanded or state.token is None
                shown = min(limit, cap) if fresh else 0
                timeline = tuple(head.newest_events[-shown:]) if shown > 0 else ()
                rooms[room_id] = RoomRequest(expanded, timeline, None, limit, head.own)
            ans = answer(index, user, state, rooms)
            if ans.receipts or pos is None or time.monotonic() >= deadline:
                break
            await self.feed.wait_for_change(deadline - time.monotonic())
        new_pos = Pos.new(ans.state.token).encode()
        self.connections.put(user, req.conn_id, new_pos, ans.state)
        SLIDING_CONNECTIONS.set(len(self.connections))
        extensions = {"receipts": {"rooms": ans.receipts}} if enabled else {}
        return _json({"pos": new_pos, "lists": {}, "rooms": {}, "extensions": extensions})

    def _sliding_state(self, user: str, conn_id: str, pos: str | None, keeps: bool) -> State:
        unknown = ApiError(400, "M_UNKNOWN_POS", "Unknown position")
        try:
            state = resolve(self.connections, user, conn_id, pos, keeps)
        except UnknownPos:
            UNKNOWN_POS.inc()
            raise unknown from None
        if state.token is not None:
            try:
                self._check_layout(state.token, unknown)
            except ApiError:
                UNKNOWN_POS.inc()
                raise
        return state

    async def _reach(self, state: State, sinces: list[Token], deadline: float) -> bool:
        """Read-after-write: wait for every position the request holds."""
        for token in ([state.token] if state.token else []) + sinces:
            self._check_layout(token, ApiError(400, "M_UNKNOWN_POS", "Unknown position"))
            if not await self.feed.wait_until(token, deadline):
                return False
        return True

    async def _wait_caught_up(self, deadline: float) -> None:
        if not self.feed.caught_up.is_set():
            left = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self.feed.caught_up.wait(), left or 30)
            except TimeoutError:
                raise ApiError(503, "M_UNKNOWN", "Receipts are still loading") from None

    async def get_room_receipts(self, request: web.Request) -> web.Response:
        """Admin: the room's current receipts; public ones (`m.read`) unless
        `include_private=true` adds `m.read.private` and `m.fully_read`."""
        self._admin(request)
        room_id = check_room_id(self._params(request)["roomId"])
        private = parse_flag(self._query(request).get("include_private"), "include_private")
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
            if private or k.receipt_type == "m.read"
        ]
        entries.sort(key=lambda e: (e["user_id"], e["receipt_type"], e["thread_id"] or ""))
        return _json({"room_id": room_id, "receipts": entries})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    def started(self) -> bool:
        """Tables recovered and the sync view caught up (whatever the loops' health)."""
        return self.ready() and (self.feed.caught_up.is_set() or not self.client)

    def _readiness(self) -> tuple[bool, bool, bool, list[str]]:
        tables, view = self.ready(), self.feed.caught_up.is_set() or not self.client
        stuck = LoopHealth.problems()  # a loop failing again and again is not ready
        return tables and view and not stuck, tables, view, stuck

    async def readyz(self, request: web.Request) -> web.Response:
        """Admin: readiness and why (tables, sync view, stuck loops, parked records)."""
        ready, tables, view, stuck = self._readiness()
        # Parked records are shown, never a reason for 503: parking is how a loop recovers.
        parked = ParkedLog.summary()
        return _json(
            {"ready": ready, "tables": tables, "sync_view": view, "stuck": stuck, "parked": parked},
            200 if ready else 503,
        )

    async def client_readyz(self, request: web.Request) -> web.Response:
        """Client port: the same status, and nothing else."""
        ready = self._readiness()[0]
        return _json({"ready": ready}, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@contextlib.asynccontextmanager
async def serving(api: Api, s: Settings) -> AsyncIterator[None]:
    """Serve `api` on the client and the admin listener for the duration of the block."""
    cap = connection_cap(s.http_max_connections)
    runners = [MatrixAppRunner(api.app(), access_log=None, max_connections=cap)]
    runners.append(MatrixAppRunner(api.admin_app(), access_log=None))
    try:
        for runner, host, port, shared in zip(
            runners,
            (s.web_host, s.admin_host),
            (s.web_port, s.admin_port),
            (s.web_reuse_port, False),
            strict=True,
        ):
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_port=shared or None).start()
        log.info(
            "HTTP API listening",
            extra={
                "host": s.web_host,
                "port": s.web_port,
                "reuse_port": s.web_reuse_port,
                "admin_host": s.admin_host,
                "admin_port": s.admin_port,
                "client_api": api.client,
                "max_connections": cap,
            },
        )
        freezing = asyncio.create_task(freeze_when_ready(api.started))
        yield
    finally:
        if "freezing" in locals():
            freezing.cancel()
        for runner in reversed(runners):
            await runner.cleanup()
