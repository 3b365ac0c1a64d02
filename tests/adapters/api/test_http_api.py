"""The client HTTP API on the real broker, used the way a Matrix client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.http import Client, fully_read_in, receipts_in
from tests.support.scenario import Room, pass_barrier
from tests.support.spec import validate_receipt_event, validate_sync_response
from tests.support.worker import WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

USERS = {
    "alice": "@alice:hs1",
    "bob": "@bob:hs1",
    "carol": "@carol:hs1",
    "dave": "@dave:hs1",
    "eve": "@eve:hs1",
    "spam": "@spam:hs1",
    "outsider": "@outsider:hs1",
}
ADMIN_TOKEN = "admin-secret"


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({f"tok-{name}": user for name, user in USERS.items()}))
    admin_tokens = tmp_path / "admin-tokens.json"
    admin_tokens.write_bytes(orjson.dumps([ADMIN_TOKEN]))
    settings = worker_settings(
        kafka_bootstrap,
        tmp_path,
        tokens_file=tokens,
        admin_tokens_file=admin_tokens,
        rate_limit_per_s=1.0,
        rate_limit_burst=30.0,
    )
    w = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        w.start().wait_ready()
        yield w
    finally:
        w.stop()


@pytest.fixture
async def http(worker: WorkerProcess) -> AsyncIterator[dict[str, Client]]:
    base = f"http://127.0.0.1:{worker.settings.web_port}"
    async with aiohttp.ClientSession() as session:
        clients = {name: Client(session, base, f"tok-{name}") for name in USERS}
        clients["anonymous"] = Client(session, base, None)
        clients["stranger"] = Client(session, base, "tok-nobody")
        yield clients


async def seed(
    worker: WorkerProcess,
    kafka_bootstrap: str,
    room: Room,
    members: dict[str, str],
    events: list[Any],
) -> None:
    records = [room.member(USERS[name], membership) for name, membership in members.items()]
    await produce(kafka_bootstrap, records + events)
    await pass_barrier(kafka_bootstrap, room, worker.settings.topic_dlq)


async def test_every_error_has_its_status_and_errcode(
    worker: WorkerProcess, http: dict[str, Client], kafka_bootstrap: str
) -> None:
    room = Room(worker.settings, "!errors:hs1")
    await seed(
        worker,
        kafka_bootstrap,
        room,
        {"alice": "join", "spam": "join", "dave": "join", "eve": "invite"},
        [room.event("$e1")],
    )
    await produce(kafka_bootstrap, [room.member(USERS["dave"], "leave")])
    await pass_barrier(kafka_bootstrap, room, worker.settings.topic_dlq)
    alice, r = http["alice"], room.room_id
    receipt_path = f"/_matrix/client/v3/rooms/{r}/receipt/m.read/$e1"
    cases: list[tuple[str, Any, int, str]] = [
        ("no token", http["anonymous"].receipt(r, "m.read", "$e1"), 401, "M_MISSING_TOKEN"),
        ("unknown token", http["stranger"].receipt(r, "m.read", "$e1"), 401, "M_UNKNOWN_TOKEN"),
        ("no body", alice.receipt(r, "m.read", "$e1", body=b""), 400, "M_NOT_JSON"),
        ("not JSON", alice.receipt(r, "m.read", "$e1", body=b"{nope"), 400, "M_NOT_JSON"),
        ("not an object", alice.receipt(r, "m.read", "$e1", body=b"[1]"), 400, "M_BAD_JSON"),
        ("receipt type", alice.receipt(r, "m.bogus", "$e1"), 400, "M_INVALID_PARAM"),
        ("empty thread", alice.receipt(r, "m.read", "$e1", thread_id=""), 400, "M_INVALID_PARAM"),
        (
            "thread not a string",
            alice.receipt(r, "m.read", "$e1", body={"thread_id": 5}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "thread with fully_read",
            alice.receipt(r, "m.fully_read", "$e1", thread_id="main"),
            400,
            "M_INVALID_PARAM",
        ),
        ("bad room id", alice.receipt("notaroom", "m.read", "$e1"), 400, "M_INVALID_PARAM"),
        ("bad event id", alice.receipt(r, "m.read", "noevent"), 400, "M_INVALID_PARAM"),
        ("bad read marker", alice.read_markers(r, {"m.fully_read": 7}), 400, "M_INVALID_PARAM"),
        ("markers not JSON", alice.read_markers(r, b"x"), 400, "M_NOT_JSON"),
        ("other method", alice.request("GET", receipt_path), 405, "M_UNRECOGNIZED"),
        (
            "bad since",
            alice.request("GET", "/_matrix/client/v3/sync", since="garbage"),
            400,
            "M_INVALID_PARAM",
        ),
        ("invited only", http["eve"].receipt(r, "m.read", "$e1"), 403, "M_FORBIDDEN"),
    ]
    for name, call, status, errcode in cases:
        got_status, body = await call
        assert (got_status, body.get("errcode")) == (status, errcode), name
        assert isinstance(body.get("error"), str), name

    # The leave reaches the API's membership view shortly after the fold.
    for _ in range(50):
        status, body = await http["dave"].receipt(r, "m.read", "$e1")
        if status == 403:
            break
        await asyncio.sleep(0.1)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    statuses = [await http["spam"].receipt(r, "m.read", "$e1") for _ in range(35)]
    limited = [body for status, body in statuses if status == 429]
    assert limited and all(b["errcode"] == "M_LIMIT_EXCEEDED" for b in limited)
    assert all(isinstance(b["retry_after_ms"], int) and b["retry_after_ms"] > 0 for b in limited)
    assert [s for s, _ in statuses[:30]] == [200] * 30


async def test_multi_user_scenario_over_http(
    worker: WorkerProcess, http: dict[str, Client], kafka_bootstrap: str
) -> None:
    room = Room(worker.settings, "!chat:hs1")
    r = room.room_id
    events = [room.event(f"$e{i}") for i in range(1, 8)]
    events += [room.event("$root"), room.event("$t1", relates_to=("m.thread", "$root"))]
    await seed(
        worker, kafka_bootstrap, room, {"alice": "join", "bob": "join", "carol": "join"}, events
    )
    alice, bob, carol = http["alice"], http["bob"], http["carol"]
    responses: list[dict[str, Any]] = []

    async def sync(client: Client, since: str | None = None, timeout: int = 0) -> dict:
        body = await client.sync(since, timeout)
        responses.append(body)
        return body

    start = await sync(bob)
    # A long-poll is woken by a new receipt, well before its timeout.
    poll = asyncio.create_task(sync(bob, start["next_batch"], timeout=20_000))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    assert await alice.receipt(r, "m.read", "$e2") == (200, {})
    woken = await asyncio.wait_for(poll, 20)
    assert time.monotonic() - t0 < 10
    assert receipts_in(woken, r) == {(USERS["alice"], "m.read", None): "$e2"}

    # Private receipts only for their owner; read markers only in the owner's account data.
    assert (await alice.receipt(r, "m.read.private", "$e3"))[0] == 200
    assert (await bob.read_markers(r, {"m.fully_read": "$e2", "m.read": "$e2"}))[0] == 200
    assert (await carol.receipt(r, "m.read", "$e1"))[0] == 200  # sentinel for the others
    mark = woken["next_batch"]
    bob_view = await _sync_until(
        bob, mark, lambda b: (USERS["carol"], "m.read", None) in receipts_in(b, r), responses
    )
    assert receipts_in(bob_view, r) == {
        (USERS["bob"], "m.read", None): "$e2",
        (USERS["carol"], "m.read", None): "$e1",
    }
    assert fully_read_in(bob_view, r) == "$e2"
    alice_view = await sync(alice)
    assert receipts_in(alice_view, r) == {
        (USERS["alice"], "m.read", None): "$e2",
        (USERS["alice"], "m.read.private", None): "$e3",
        (USERS["bob"], "m.read", None): "$e2",
        (USERS["carol"], "m.read", None): "$e1",
    }
    assert fully_read_in(alice_view, r) is None

    # An older receipt moves nothing back; threads sit side by side; only the latest per key.
    mark = alice_view["next_batch"]
    assert (await alice.receipt(r, "m.read", "$e1"))[0] == 200
    assert (await carol.receipt(r, "m.read", "$t1", thread_id="$root"))[0] == 200
    assert (await carol.receipt(r, "m.read", "$e4", thread_id="main"))[0] == 200
    assert (await bob.receipt(r, "m.read", "$e3"))[0] == 200
    assert (await bob.receipt(r, "m.read", "$e5"))[0] == 200
    changes = await _sync_until(
        alice,
        mark,
        lambda b: (
            receipts_in(b, r).get((USERS["bob"], "m.read", None)) == "$e5"
            and len(receipts_in(b, r)) >= 3
        ),
        responses,
    )
    assert receipts_in(changes, r) == {
        (USERS["carol"], "m.read", "$root"): "$t1",
        (USERS["carol"], "m.read", "main"): "$e4",
        (USERS["bob"], "m.read", None): "$e5",
    }
    [event] = changes["rooms"]["join"][r]["ephemeral"]["events"]
    assert event["content"]["$t1"]["m.read"][USERS["carol"]]["thread_id"] == "$root"

    # The room's current receipts, as operators and analytics see them: on the admin listener
    # only, with an admin token, private receipts and read markers only when asked for.
    view = f"/_receipts/v1/rooms/{r}/receipts"
    assert (await alice.request("GET", view))[0] == 404, "not on the client port"
    admin_base = f"http://127.0.0.1:{worker.settings.admin_port}"
    admin = Client(alice.session, admin_base, ADMIN_TOKEN)
    assert (await Client(alice.session, admin_base, None).request("GET", view)) == (
        401,
        {"errcode": "M_MISSING_TOKEN", "error": "Missing access token"},
    )
    status, body = await Client(alice.session, admin_base, "tok-alice").request("GET", view)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    public = {
        (USERS["alice"], "m.read", None): "$e2",
        (USERS["bob"], "m.read", None): "$e5",
        (USERS["carol"], "m.read", None): "$e1",
        (USERS["carol"], "m.read", "$root"): "$t1",
        (USERS["carol"], "m.read", "main"): "$e4",
    }
    status, table = await admin.request("GET", view)
    assert status == 200 and table["room_id"] == r
    assert {
        (e["user_id"], e["receipt_type"], e["thread_id"]): e["event_id"] for e in table["receipts"]
    } == public
    status, table = await admin.request("GET", view, include_private="true")
    assert status == 200
    assert {
        (e["user_id"], e["receipt_type"], e["thread_id"]): e["event_id"] for e in table["receipts"]
    } == public | {
        (USERS["alice"], "m.read.private", None): "$e3",
        (USERS["bob"], "m.fully_read", None): "$e2",
    }

    for body in responses:
        validate_sync_response(body)
        for room_body in body["rooms"]["join"].values():
            for event in room_body.get("ephemeral", {}).get("events", []):
                validate_receipt_event(event)


async def test_a_token_from_before_a_restart_still_works(
    worker: WorkerProcess, http: dict[str, Client], kafka_bootstrap: str
) -> None:
    room = Room(worker.settings, "!restart:hs1")
    r = room.room_id
    await seed(
        worker,
        kafka_bootstrap,
        room,
        {"alice": "join", "bob": "join"},
        [room.event("$e1"), room.event("$e2")],
    )
    assert (await http["alice"].receipt(r, "m.read", "$e1"))[0] == 200
    before = await _sync_until(http["bob"], None, lambda b: receipts_in(b, r), None)
    token = before["next_batch"]

    assert worker.stop() == 0
    worker.start().wait_ready()
    base = f"http://127.0.0.1:{worker.settings.web_port}"
    async with aiohttp.ClientSession() as session:
        alice, bob = Client(session, base, "tok-alice"), Client(session, base, "tok-bob")
        assert (await alice.receipt(r, "m.read", "$e2"))[0] == 200
        after = await _sync_until(bob, token, lambda b: receipts_in(b, r), None)
    assert receipts_in(after, r) == {(USERS["alice"], "m.read", None): "$e2"}
    assert "rebuilding" not in worker.tail(200), "a clean stop keeps the local state"


async def _sync_until(
    client: Client, since: str | None, done: Any, seen: list[dict] | None
) -> dict:
    """Long-poll /sync from `since` until `done(body)`; each call asks for changes since
    `since` (not since the previous answer), so the last body holds all of them. Every body
    is appended to `seen`, when given, for the scenario's schema checks."""
    deadline = time.monotonic() + 30
    while True:
        body = await client.sync(since, timeout=1000)
        if seen is not None:
            seen.append(body)
        if done(body):
            return body
        assert time.monotonic() < deadline, f"gave up waiting, last: {body}"


async def test_a_separate_api_process_serves_what_a_table_worker_folds(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`receipt-streams api` beside a worker started with RECEIPT_STREAMS_SERVE_API=false."""
    from receipt_streams.bench.process import free_port

    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-alice": USERS["alice"], "tok-bob": USERS["bob"]}))
    s = worker_settings(kafka_bootstrap, tmp_path, tokens_file=tokens, serve_api=False)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    api = WorkerProcess(
        s.model_copy(
            update={"web_port": free_port(), "admin_port": free_port(), "serve_api": True}
        ),
        tmp_path / "api.log",
        command="api",
    )
    try:
        worker.start().wait_ready()
        api.start().wait_ready()
        room = Room(s, "!split:hs1")
        await seed(
            worker, kafka_bootstrap, room, {"alice": "join", "bob": "join"}, [room.event("$e1")]
        )
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{api.settings.web_port}"
            async with session.post(
                f"{base}/_matrix/client/v3/rooms/{room.room_id}/receipt/m.read/$e1",
                data=b"{}",
                headers={"Authorization": "Bearer tok-alice"},
            ) as resp:
                assert resp.status == 200
            bob = Client(session, base, "tok-bob")
            body = await _sync_until(bob, None, lambda b: receipts_in(b, room.room_id), None)
            assert receipts_in(body, room.room_id) == {(USERS["alice"], "m.read", None): "$e1"}
            worker_base = f"http://127.0.0.1:{s.web_port}"
            async with session.get(worker_base + "/_matrix/client/v3/sync") as resp:
                assert resp.status == 404, "the table worker serves no client API"
            async with session.get(worker_base + "/readyz") as resp:
                assert await resp.json() == {"ready": True}, "status only on the client port"
            for process in (worker, api):  # every process serves the admin listener too
                admin_base = f"http://127.0.0.1:{process.settings.admin_port}"
                async with session.get(admin_base + "/readyz") as resp:
                    assert resp.status == 200 and "parked" in await resp.json()
                async with session.get(admin_base + "/metrics") as resp:
                    assert resp.status == 200
                    assert "receipt_streams_http_client_connections" in await resp.text()
                client_base = f"http://127.0.0.1:{process.settings.web_port}"
                async with session.get(client_base + "/metrics") as resp:
                    assert resp.status == 404, "metrics on the admin listener only"
                    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    finally:
        api.stop()
        worker.stop()


async def test_metrics_report_consumer_lag_and_receipts(
    worker: WorkerProcess, http: dict[str, Client], kafka_bootstrap: str
) -> None:
    room = Room(worker.settings, "!metrics:hs1")
    await seed(worker, kafka_bootstrap, room, {"alice": "join"}, [room.event("$e1")])
    assert (await http["alice"].receipt(room.room_id, "m.read", "$e1"))[0] == 200
    deadline = time.monotonic() + 30
    while True:
        _, _ = await http["alice"].request("GET", "/healthz")
        admin = f"http://127.0.0.1:{worker.settings.admin_port}"
        async with http["alice"].session.get(admin + "/metrics") as resp:
            text = await resp.text()
        lag = {
            line.split("{")[1].split(",")[0]
            for line in text.splitlines()
            if line.startswith("receipt_streams_consumer_lag{")
        }
        folded = 'receipt_streams_receipts_total{outcome="applied",source="client"}' in text
        if (
            {'consumer="fold"', 'consumer="sync-deltas"', 'consumer="sync-view"'} <= lag
            and 'receipt_streams_http_receipts_total{receipt_type="m.read"} 1.0' in text
            and folded  # the fold may come after the lag gauges on a busy machine
        ):
            break
        assert time.monotonic() < deadline, f"metrics incomplete: {sorted(lag)}"
        await asyncio.sleep(0.5)
    assert 'receipt_streams_receipts_total{outcome="applied",source="client"}' in text
