"""The wrk driver: its summary parsed, its send log read, and a real wrk run paced to a rate
against a small local server (wrk is installed by .ci/run and scripts/bench.sh)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from aiohttp import web

from receipt_streams.bench.wrk import (
    Request,
    parse_output,
    post_at_rate,
    read_log,
    requests_at_rate,
)

SAMPLE = """Running 5s test @ http://127.0.0.1:8008
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.61ms    6.20ms  96.64ms   95.12%
    Req/Sec     1.01k    40.12     1.10k    70.00%
  Latency Distribution
     50%    4.98ms
     75%    6.10ms
     90%    8.00ms
     99%  812.00us
  5021 requests in 5.00s, 1.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   1004.20
"""


def test_summary_is_parsed() -> None:
    requests, non_2xx, socket_errors, p50, p99 = parse_output(SAMPLE)
    assert (requests, non_2xx, socket_errors) == (5021, 7, 6)
    assert p50 == 4.98
    assert math.isclose(p99, 0.812)


def test_a_clean_run_has_no_errors() -> None:
    clean = SAMPLE.replace("  Socket errors: connect 0, read 2, write 1, timeout 3\n", "")
    clean = clean.replace("  Non-2xx or 3xx responses: 7\n", "")
    assert parse_output(clean)[1:3] == (0, 0)


def test_send_log_is_zero_based(tmp_path: Path) -> None:
    log = tmp_path / "sent.txt"
    log.write_text("1 1000.500\n2 1001.250\n")
    assert read_log(log) == {0: 1000.5, 1: 1001.25}
    assert read_log(tmp_path / "absent.txt") == {}


async def test_wrk_posts_the_plan_at_the_rate(tmp_path: Path) -> None:
    got: list[tuple[str, str]] = []

    async def receipt(request: web.Request) -> web.Response:
        got.append((request.path, request.headers["Authorization"]))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/r/{n}", receipt)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        plan = [(f"/r/{n}", f"tok{n}") for n in range(2000)]
        result = await post_at_rate(
            f"http://127.0.0.1:{port}", plan, 200, 2, tmp_path, connections=8
        )
    finally:
        await runner.cleanup()
    assert result.non_2xx == 0 and result.socket_errors == 0
    # Paced: about 200 a second for 2 s, not as fast as the server answers.
    assert 250 <= len(result.sent_at_ms) <= 500, len(result.sent_at_ms)
    # The log names what was sent, in plan order, with its bearer token (and at most a
    # request per connection that wrk built but never wrote, when it opened it).
    logged = {(f"/r/{i}", f"Bearer tok{i}") for i in result.sent_at_ms}
    assert set(got) <= logged
    assert len(logged - set(got)) <= 8
    times = [result.sent_at_ms[i] for i in sorted(result.sent_at_ms)]
    assert times == sorted(times)
    await asyncio.sleep(0)


async def test_wrk_sends_methods_and_bodies_and_cycles(tmp_path: Path) -> None:
    got: list[tuple[str, str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        got.append((request.method, request.path_qs, request.headers["Authorization"], body))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    plan = [
        Request("GET", "/sync?since=r1&timeout=0", "a"),
        Request("POST", "/ss?timeout=0", "b", b'{"conn_id":"main"}'),
    ]
    try:
        result = await requests_at_rate(
            f"http://127.0.0.1:{port}", plan, 100, 2, tmp_path, connections=4, cycle=True
        )
    finally:
        await runner.cleanup()
    assert result.non_2xx == 0 and result.socket_errors == 0
    # Round the plan again and again: both lines many times, each as written.
    assert len(got) >= 100
    assert set(got) == {
        ("GET", "/sync?since=r1&timeout=0", "Bearer a", b""),
        ("POST", "/ss?timeout=0", "Bearer b", b'{"conn_id":"main"}'),
    }


def test_a_plan_line_holds_no_space() -> None:
    try:
        Request("POST", "/p", "t", b'{"a": 1}').line()
    except ValueError:
        return
    raise AssertionError("a body with a space was accepted")
