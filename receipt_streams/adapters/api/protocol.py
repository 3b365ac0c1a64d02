"""Matrix error bodies for requests that never reach the application: aiohttp's HTTP parser
answers malformed request lines, methods and headers (and oversized ones) itself, in
text/plain. Here those answers carry the spec's `{"errcode", "error"}` JSON too. A
connection that sends no complete request is closed after `IDLE_TIMEOUT_S`, not aiohttp's hour.
And the client listener holds at most `max_connections` open connections: one more is answered
at once with 503 `M_LIMIT_EXCEEDED` and closed, its request never read (issue 12).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

OPEN_CONNECTIONS = Gauge(
    "receipt_streams_http_client_connections", "Open connections to the client listener."
)
REFUSED_CONNECTIONS = Counter(
    "receipt_streams_http_client_connections_refused_total",
    "Connections to the client listener refused (503 M_LIMIT_EXCEEDED) because "
    "RECEIPT_STREAMS_HTTP_MAX_CONNECTIONS were open.",
)
# File descriptors kept for everything but client connections (Kafka clients, RocksDB files,
# the admin listener, logs): the connection cap stays below the soft RLIMIT_NOFILE less this
# (less half the limit when the limit is under twice this).
FD_RESERVE = 1024
# A refused connection gets its answer, then half-closed; what the client sends meanwhile is
# discarded (closing with unread data would reset the connection and lose the answer), and it
# is closed when the client closes its side or after this many seconds. At most
# `REFUSED_LINGERING` refused connections linger so (a flood of them must not take the
# reserved descriptors); past that, one is closed as soon as its answer is written.
REFUSED_LINGER_S = 1.0
REFUSED_LINGERING = FD_RESERVE // 4
RETRY_AFTER_S = 1
_REFUSAL_BODY = orjson.dumps(
    {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "Too many open connections",
        "retry_after_ms": RETRY_AFTER_S * 1000,
    }
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: %d\r\n"
    b"Access-Control-Allow-Origin: *\r\n"
    b"Connection: close\r\n\r\n" % (len(_REFUSAL_BODY), RETRY_AFTER_S)
) + _REFUSAL_BODY

# A connection idle this long, between requests or before its first complete request line
# and headers, is closed (aiohttp's `run_app` default; the AppRunner's own is 3,630 s, so a
# client trickling a header, or sending nothing, held its connection and file descriptor for
# an hour).
IDLE_TIMEOUT_S = 75.0


def errcode_for(status: int) -> str:
    if status in (413, 431):
        return "M_TOO_LARGE"
    return "M_UNKNOWN" if status >= 500 else "M_UNRECOGNIZED"


class MatrixRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling request", exc_info=exc)
        else:  # hostile or broken clients: expected on an open port, not worth a traceback
            log.debug("malformed request: %s", exc or message)
        if request.writer.output_size > 0:
            raise ConnectionError("Response already started: no error response possible")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(
            status=status,
            body=orjson.dumps({"errcode": errcode_for(status), "error": phrase}),
            content_type="application/json",
        )
        response.force_close()
        return response


class _CountedRequestHandler(MatrixRequestHandler):
    """A client-listener connection, counted from its creation until it is lost."""

    def __init__(self, manager: _MatrixServer, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._counted_by: _MatrixServer | None = manager

    def connection_lost(self, exc: BaseException | None) -> None:
        counted, self._counted_by = self._counted_by, None
        if counted is not None:
            counted.open_connections -= 1
            OPEN_CONNECTIONS.dec()
        super().connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """A connection over the cap: the 503 at once, then closed; its bytes are never parsed."""

    lingering = 0  # refused connections of this process waiting for their client's FIN

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is not registered as an asyncio.Transport subclass.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        REFUSED_CONNECTIONS.inc()
        transport.write(REFUSAL)
        if transport.can_write_eof() and _Refusal.lingering < REFUSED_LINGERING:
            transport.write_eof()  # FIN once the answer is out
            _Refusal.lingering += 1
            self._timer = self._loop.call_later(REFUSED_LINGER_S, transport.close)
        else:
            transport.close()  # the answer is still written first

    def data_received(self, data: bytes) -> None:
        return None  # never read: discarded

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            _Refusal.lingering -= 1
        self._transport = None


class _MatrixServer(web.Server):
    max_connections: int | None = None  # None: not counted, not capped (the admin listener)
    open_connections: int = 0

    def __call__(self) -> RequestHandler:  # type: ignore[override]
        # Counted here, when the loop accepts, not in connection_made: one accept round
        # creates several protocols before any of them is connected.
        cap = self.max_connections
        if cap is None:
            return MatrixRequestHandler(self, loop=self._loop, **self._kwargs)
        if self.open_connections >= cap:
            return _Refusal(self._loop)  # type: ignore[return-value]
        self.open_connections += 1
        OPEN_CONNECTIONS.inc()
        return _CountedRequestHandler(self, loop=self._loop, **self._kwargs)


class MatrixAppRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors with Matrix JSON errors, and
    (given `max_connections`) refuse connections beyond that many open ones."""

    def __init__(
        self, app: web.Application, *, max_connections: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self.max_connections = max_connections

    async def _make_server(self) -> web.Server:
        self._kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT_S)
        server = await super()._make_server()
        server.__class__ = _MatrixServer  # same object, only the protocol factory differs
        assert isinstance(server, _MatrixServer)
        server.max_connections = self.max_connections
        return server


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to fit the open-file limit less `FD_RESERVE`. The soft limit is
    first raised towards the hard one if it is too low; a lowered cap is logged once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    fits = max(1, soft - min(FD_RESERVE, soft // 2))
    if fits >= wanted:
        return wanted
    log.warning(
        "HTTP connection cap lowered to fit the open-file limit",
        extra={
            "http_max_connections": wanted,
            "lowered_to": fits,
            "rlimit_nofile_soft": soft,
            "rlimit_nofile_hard": hard,
            "fd_reserve": min(FD_RESERVE, soft // 2),
        },
    )
    return fits
