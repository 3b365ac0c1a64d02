"""The two listeners of a real worker process (issue 12): the client port serves only what a
Matrix client may see (no /metrics, a /readyz without detail) and holds at most
RECEIPT_STREAMS_HTTP_MAX_CONNECTIONS open connections; the admin listener serves the metrics
and the detailed /readyz."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.http import get
from tests.support.worker import WorkerProcess, worker_settings

pytestmark = pytest.mark.broker

CAP = 3
ERROR_LINE = re.compile(r"^\[[^\]]+\] (ERROR|CRITICAL) ")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def metric(admin: str, name: str) -> float:
    _, text = get(f"{admin}/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the admin listener's /metrics")


def answer(port: int, request: bytes | None) -> bytes:
    """Everything the client port sends back on a new connection until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if request is not None:
            sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    s = worker_settings(kafka_bootstrap, tmp_path, http_max_connections=CAP)
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        yield w
    finally:
        w.stop()


def test_metrics_and_readiness_detail_only_on_the_admin_listener(worker: WorkerProcess) -> None:
    s = worker.settings
    client, admin = f"http://127.0.0.1:{s.web_port}", f"http://127.0.0.1:{s.admin_port}"
    status, body = get(f"{client}/metrics")
    assert status == 404 and orjson.loads(body)["errcode"] == "M_UNRECOGNIZED"
    status, body = get(f"{admin}/metrics")
    assert status == 200 and b"receipt_streams_http_client_connections " in body
    status, body = get(f"{client}/readyz")
    assert (status, orjson.loads(body)) == (200, {"ready": True})
    status, body = get(f"{admin}/readyz")
    detail = orjson.loads(body)
    assert status == 200 and detail["ready"] is True
    assert {"tables", "sync_view", "stuck", "parked"} <= set(detail)
    assert get(f"{client}/healthz") == get(f"{admin}/healthz") == (200, b'{"status":"ok"}')


def test_a_connection_over_the_cap_is_refused_at_once(worker: WorkerProcess) -> None:
    s = worker.settings
    admin = f"http://127.0.0.1:{s.admin_port}"
    refused = metric(admin, "receipt_streams_http_client_connections_refused_total")
    idle = [socket.create_connection(("127.0.0.1", s.web_port), timeout=10) for _ in range(CAP)]
    try:
        deadline = time.monotonic() + 10
        while metric(admin, "receipt_streams_http_client_connections") < CAP:
            assert time.monotonic() < deadline, "the idle connections were never counted"
            time.sleep(0.05)
        started = time.monotonic()
        raw = answer(s.web_port, None)  # sends nothing: answered, and closed, all the same
        assert time.monotonic() - started < 5
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), raw
        assert b"\r\nretry-after: 1\r\n" in head.lower() + b"\r\n"
        assert orjson.loads(body)["errcode"] == "M_LIMIT_EXCEEDED"
        # A client that sends its request at once gets the same answer, not a reset.
        assert answer(s.web_port, HEALTHZ).startswith(b"HTTP/1.1 503 ")
        assert metric(admin, "receipt_streams_http_client_connections_refused_total") == (
            refused + 2
        )
        idle.pop().close()
        deadline = time.monotonic() + 10
        while not (raw := answer(s.web_port, HEALTHZ)).startswith(b"HTTP/1.1 200 "):
            assert raw.startswith(b"HTTP/1.1 503 "), raw
            assert time.monotonic() < deadline, "no connection served after one closed"
            time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
    assert get(f"http://127.0.0.1:{s.web_port}/healthz")[0] == 200
    errors = [line for line in worker.tail(400).splitlines() if ERROR_LINE.match(line)]
    assert not errors, "refusing is no error"
