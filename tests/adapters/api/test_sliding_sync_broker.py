"""The sliding-sync receipts endpoints on the real broker, through worker and API processes:
a session driven the way a homeserver and a client would, and read-after-write across two API
processes (one of them held back while the receipt goes through)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from receipt_streams.config import Settings
from receipt_streams.core.sync_view import Token
from tests.support.http import Client
from tests.support.scenario import Room, pass_barrier
from tests.support.spec import validate_receipt_event
from tests.support.worker import WorkerProcess, free_port, produce, worker_settings

ALICE, BOB = "@alice:hs1", "@bob:hs1"
ADMIN = "admin-secret"
INTERNAL = "/_receipts/v1/sliding_sync"
SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


def make_settings(bootstrap: str, tmp: Path, **overrides: Any) -> Settings:
    tokens = tmp / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-alice": ALICE, "tok-bob": BOB}))
    admin = tmp / "admin.json"
    admin.write_bytes(orjson.dumps([ADMIN]))
    return worker_settings(bootstrap, tmp, tokens_file=tokens, admin_tokens_file=admin, **overrides)


async def seed(bootstrap: str, s: Settings, room: Room, events: list[str]) -> None:
    records = [room.member(ALICE), room.member(BOB)] + [room.event(e) for e in events]
    await produce(bootstrap, records)
    await pass_barrier(bootstrap, room, s.topic_dlq)


async def call(
    session: aiohttp.ClientSession, url: str, body: Any, token: str, **params: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url, data=orjson.dumps(body), headers=headers, params=params) as r:
        return r.status, await r.json()


def entries(event: dict[str, Any] | None) -> set[tuple[str, str, str]]:
    if event is None:
        return set()
    validate_receipt_event(event)
    return {
        (event_id, rtype, user)
        for event_id, by_type in event["content"].items()
        for rtype, by_user in by_type.items()
        for user in by_user
    }


async def until(predicate: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await predicate()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def test_a_sliding_sync_session_through_a_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = make_settings(kafka_bootstrap, tmp_path)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        room = Room(s, "!ss:hs1")
        await seed(kafka_bootstrap, s, room, ["$e1", "$e2", "$e3"])
        base = f"http://127.0.0.1:{s.web_port}"
        admin = f"http://127.0.0.1:{s.admin_port}"
        async with aiohttp.ClientSession() as session:
            alice = Client(session, base, "tok-alice")
            assert (await alice.receipt(room.room_id, "m.read", "$e1"))[0] == 200
            assert (await alice.receipt(room.room_id, "m.read.private", "$e3"))[0] == 200

            # The client form: bob subscribes to the room, timeline of the 2 newest events
            # ($e2, $e3): alice's public receipt is on $e1 (not on it), her private one hers.
            sub = {
                "room_subscriptions": {room.room_id: {"timeline_limit": 3}},
                "extensions": {"receipts": {"enabled": True}},
            }

            async def bob_sees_alice() -> Any:
                status, body = await call(session, base + SLIDING, sub, "tok-bob")
                assert status == 200, body
                got = body["extensions"]["receipts"]["rooms"].get(room.room_id)
                return body if got else None

            first = await until(bob_sees_alice, "bob's initial receipts")
            assert entries(first["extensions"]["receipts"]["rooms"][room.room_id]) == {
                ("$e1", "m.read", ALICE)
            }

            # live: alice moves on; bob's long-poll returns with it
            poll = asyncio.create_task(
                call(session, base + SLIDING, sub, "tok-bob", pos=first["pos"], timeout=20000)
            )
            await asyncio.sleep(0.3)
            assert (await alice.receipt(room.room_id, "m.read", "$e2"))[0] == 200
            status, live = await poll
            assert status == 200, live
            assert entries(live["extensions"]["receipts"]["rooms"][room.room_id]) == {
                ("$e2", "m.read", ALICE)
            }
            status, err = await call(session, base + SLIDING, sub, "tok-bob", pos="x.y")
            assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")

            # The homeserver-facing endpoint on the admin listener, for alice (her private
            # receipt included, as hers)
            body = {
                "user_id": ALICE,
                "conn_id": "hs",
                "rooms": {room.room_id: {"timeline": ["$e3"]}},
            }
            status, hs = await call(session, admin + INTERNAL, body, ADMIN)
            assert status == 200, hs
            assert hs["cases"] == {room.room_id: "initial"}
            assert entries(hs["receipts"]["rooms"][room.room_id]) == {
                ("$e2", "m.read", ALICE),
                ("$e3", "m.read.private", ALICE),
            }
            assert hs["remember"] == {room.room_id: {"status": "live"}}
    finally:
        worker.stop()


async def test_read_after_write_across_two_api_processes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A receipt accepted by API process A and answered by A's sliding sync; then the same
    connection's next request goes to process B, which was held back (SIGSTOP) meanwhile and
    is asked before it could read the changelog: B waits to catch up, and always sees it."""
    s = make_settings(kafka_bootstrap, tmp_path, serve_api=False)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    apis = []
    for name in ("a", "b"):
        api_s = s.model_copy(
            update={
                "web_port": free_port(),
                "admin_port": free_port(),
                "serve_api": True,
                "data_dir": tmp_path / f"api-{name}",
            }
        )
        apis.append(WorkerProcess(api_s, tmp_path / f"api-{name}.log", "api").start())
    a, b = apis
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in (worker, a, b)))
        room = Room(s, "!raw:hs1")
        events = [f"$e{n}" for n in range(6)]
        await seed(kafka_bootstrap, s, room, events)
        admin_a = f"http://127.0.0.1:{a.settings.admin_port}{INTERNAL}"
        admin_b = f"http://127.0.0.1:{b.settings.admin_port}{INTERNAL}"
        client_a = f"http://127.0.0.1:{a.settings.web_port}"
        client_b = f"http://127.0.0.1:{b.settings.web_port}"
        async with aiohttp.ClientSession() as session:
            alice = Client(session, client_a, "tok-alice")
            body: dict[str, Any] = {
                "user_id": BOB,
                "conn_id": "c",
                "rooms": {room.room_id: {"timeline": events}},
            }
            status, first = await call(session, admin_a, body, ADMIN)
            assert status == 200, first
            pos = first["pos"]
            for n in range(1, 4):
                b.pause()  # B reads nothing from here
                assert (await alice.receipt(room.room_id, "m.read", events[n]))[0] == 200

                async def a_answers(pos: str = pos) -> Any:
                    req = {**body, "pos": pos, "rooms": {room.room_id: {"status": "live"}}}
                    status, got = await call(session, admin_a, req, ADMIN)
                    assert status == 200, got
                    return got if got["receipts"]["rooms"] else None

                on_a = await until(a_answers, f"A answers receipt {n}")
                assert entries(on_a["receipts"]["rooms"][room.room_id]) == {
                    (events[n], "m.read", ALICE)
                }
                # The homeserver sends the room from scratch on B, at A's position: B is
                # asked while still stopped, then resumed; it must not answer from behind.
                req = {
                    **body,
                    "pos": on_a["pos"],
                    "timeout": 20000,
                    "rooms": {room.room_id: {"status": "initial", "timeline": [events[n]]}},
                }
                on_b_task = asyncio.create_task(call(session, admin_b, req, ADMIN))
                await asyncio.sleep(0.3)
                b.resume()
                status, on_b = await on_b_task
                assert status == 200, on_b
                assert on_b["pos"] != on_a["pos"]
                assert entries(on_b["receipts"]["rooms"].get(room.room_id)) == {
                    (events[n], "m.read", ALICE)
                }, f"round {n}: B answered from behind A's position"
                # and /sync v3 on B with A's token answers at or after it
                since = Token.decode(on_a["pos"].partition(".")[2]).encode()
                bob_b = Client(session, client_b, "tok-bob")
                synced = await bob_b.sync(since, timeout=0)
                assert Token.decode(synced["next_batch"]).reached(Token.decode(since))
                pos = on_b["pos"]
    finally:
        b.resume()
        for proc in (a, b, worker):
            proc.stop()
