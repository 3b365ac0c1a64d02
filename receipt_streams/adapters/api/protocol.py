"""Matrix error bodies for requests that never reach the application: aiohttp's HTTP parser
answers malformed request lines, methods and headers (and oversized ones) itself, in
text/plain. Here those answers carry the spec's `{"errcode", "error"}` JSON too. And a
connection that sends no complete request is closed after `IDLE_TIMEOUT_S`, not aiohttp's hour.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

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


class _MatrixServer(web.Server):
    def __call__(self) -> RequestHandler:
        return MatrixRequestHandler(self, loop=self._loop, **self._kwargs)


class MatrixAppRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors with Matrix JSON errors."""

    async def _make_server(self) -> web.Server:
        self._kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT_S)
        server = await super()._make_server()
        server.__class__ = _MatrixServer  # same object, only the protocol factory differs
        return server
