"""The sliding-sync receipts endpoints over HTTP (in process, the view fed by hand): the
homeserver-facing one on the admin listener, the client-facing one on the client listener,
and read-after-write for them and /sync."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.sync_view import Token
from tests.adapters.api import inprocess
from tests.adapters.api.inprocess import ADMIN_TOKEN, ROOM, clients, settings
from tests.support.spec import validate_receipt_event

INTERNAL = "/_receipts/v1/sliding_sync"
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
CLIENT = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ALICE, BOB = "@alice:hs1", "@bob:hs1"
OTHER = "!other:hs1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(orjson.loads((SCHEMAS / f"{name}.json").read_bytes()))


async def post(
    client: TestClient, path: str, body: Any, token: str, **params: Any
) -> tuple[int, Any]:
    resp = await client.post(path, data=orjson.dumps(body), headers=bearer(token), params=params)
    answer = await resp.json()
    if path == INTERNAL and resp.status == 200:  # what the schemas in schemas/ describe
        schema("http.sliding-sync-receipts.request").validate(body)
        schema("http.sliding-sync-receipts.response").validate(answer)
    return resp.status, answer


def check_events(rooms: dict[str, Any]) -> None:
    for event in rooms.values():
        validate_receipt_event(event)


def entries(event: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (event_id, rtype, user)
        for event_id, by_type in event["content"].items()
        for rtype, by_user in by_type.items()
        for user in by_user
    }


def write(api: Any, offset: int, user: str, rtype: str, event: str, room: str = ROOM) -> None:
    ts = 5000 + offset
    api.feed.index.apply_receipt(
        0, offset, ReceiptKey(room, user, rtype, None), Receipt(event, offset, ts, {"ts": ts})
    )


def make_api(s: Any) -> tuple[Any, Any]:
    """ROOM (partition 0) at offsets 0-2: alice m.read $e1, alice m.read.private $e2, bob
    m.fully_read $e1; alice and bob are joined (member offsets 0, 1)."""
    api, producer = inprocess.make_api(s)
    write(api, 0, ALICE, "m.read", "$e1")  # as the fold writes it: data has ts
    write(api, 1, ALICE, "m.read.private", "$e2")
    return api, producer


async def test_internal_endpoint_initial_live_and_positions_to_remember(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (_, admin):
        body = {"user_id": BOB, "conn_id": "c1", "rooms": {ROOM: {"timeline": ["$e1", "$e2"]}}}
        status, first = await post(admin, INTERNAL, body, ADMIN_TOKEN)
        assert status == 200, first
        assert first["cases"] == {ROOM: "initial"}
        assert first["remember"] == {ROOM: {"status": "live"}}
        # bob sees alice's public receipt on the timeline; neither her private one nor his
        # own m.fully_read (account data)
        assert entries(first["receipts"]["rooms"][ROOM]) == {("$e1", "m.read", ALICE)}
        check_events(first["receipts"]["rooms"])

        write(api, 3, ALICE, "m.read", "$e5")
        body = {"user_id": BOB, "conn_id": "c1", "pos": first["pos"], "rooms": {ROOM: {}}}
        status, live = await post(admin, INTERNAL, body, ADMIN_TOKEN)
        assert status == 200, live
        assert live["cases"] == {ROOM: "live"}
        assert entries(live["receipts"]["rooms"][ROOM]) == {("$e5", "m.read", ALICE)}

        # ROOM leaves the response while it changes: it is demoted, with its position
        write(api, 4, ALICE, "m.read", "$e6")
        body = {"user_id": BOB, "conn_id": "c1", "pos": live["pos"], "rooms": {}}
        status, out = await post(admin, INTERNAL, body, ADMIN_TOKEN)
        assert status == 200, out
        assert out["receipts"] == {"rooms": {}}
        since = out["remember"][ROOM]["since"]
        assert out["remember"] == {ROOM: {"status": "previously", "since": since}}
        assert Token.decode(since).receipts[0] == 4

        # The homeserver keeps its own per-room state: a process that never saw this
        # connection answers from the statuses given (here, a fresh Api on the same view).
        other_api, _ = make_api(settings(tmp_path))
        other_api.feed = api.feed
        async with clients(other_api) as (_, other_admin):
            body = {
                "user_id": BOB,
                "conn_id": "c1",
                "pos": out["pos"],
                "rooms": {ROOM: {"status": "previously", "since": since}},
            }
            status, back = await post(other_admin, INTERNAL, body, ADMIN_TOKEN)
            assert status == 200, back
            assert back["cases"] == {ROOM: "previously"}
            assert entries(back["receipts"]["rooms"][ROOM]) == {("$e6", "m.read", ALICE)}
            del body["rooms"][ROOM]["status"]  # without statuses it needs our state: unknown
            status, unknown = await post(other_admin, INTERNAL, body, ADMIN_TOKEN)
            assert (status, unknown["errcode"]) == (400, "M_UNKNOWN_POS")


async def test_internal_endpoint_refuses_clients_bad_bodies_and_unknown_positions(
    tmp_path: Path,
) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, admin):
        body = {"user_id": BOB, "rooms": {}}
        status, err = await post(admin, INTERNAL, body, "tok-bob")
        assert (status, err["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        resp = await client.post(INTERNAL, data=orjson.dumps(body), headers=bearer(ADMIN_TOKEN))
        assert resp.status == 404  # not on the client port
        for bad in (
            {"rooms": {}},
            {"user_id": "bob", "rooms": {}},
            {"user_id": BOB, "rooms": {"not-a-room": {}}},
            {"user_id": BOB, "rooms": {ROOM: {"status": "sideways"}}},
            {"user_id": BOB, "rooms": {ROOM: {"timeline": "$e1"}}},
            {"user_id": BOB, "rooms": {ROOM: {"timeline": ["no-sigil"]}}},
            {"user_id": BOB, "timeout": -1, "rooms": {}},
        ):
            status, err = await post(admin, INTERNAL, bad, ADMIN_TOKEN)
            assert (status, err["errcode"]) == (400, "M_INVALID_PARAM"), bad
        for pos in ("garbage", "ab.rAAAA", "ab.r" + "MCwwOzA"):  # the last: wrong layout
            body = {"user_id": BOB, "pos": pos, "rooms": {ROOM: {}}}
            status, err = await post(admin, INTERNAL, body, ADMIN_TOKEN)
            assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS"), pos


async def test_client_form_room_subscriptions(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path))
    index = api.feed.index
    index.apply_event(0, 2, ROOM, "$e1", 1)
    index.apply_event(0, 3, ROOM, "$e2", 2)
    index.apply_membership(0, 4, OTHER, BOB, "leave")
    write(api, 3, BOB, "m.read", "$e9", OTHER)  # a room bob left: never shown
    subs = {ROOM: {"timeline_limit": 1}, OTHER: {"timeline_limit": 5}}
    body = {"room_subscriptions": subs, "extensions": {"receipts": {"enabled": True}}}
    async with clients(api) as (client, _):
        status, err = await post(client, CLIENT, body, "tok-nobody")
        assert (status, err["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        status, first = await post(client, CLIENT, body, "tok-alice")
        assert status == 200, first
        # timeline_limit 1: the newest event, $e2, has alice's private receipt (hers)
        rooms = first["extensions"]["receipts"]["rooms"]
        assert set(rooms) == {ROOM}
        assert entries(rooms[ROOM]) == {("$e1", "m.read", ALICE), ("$e2", "m.read.private", ALICE)}
        check_events(rooms)
        assert first["lists"] == {} and first["rooms"] == {}

        status, bobs = await post(client, CLIENT, body, "tok-bob")
        assert ROOM not in bobs["extensions"]["receipts"]["rooms"]  # $e2 only holds a private one

        # sticky: enabled is remembered; a live change comes with the next pos
        write(api, 4, BOB, "m.read", "$e2")
        sticky = {"room_subscriptions": {ROOM: {"timeline_limit": 1}}}
        status, live = await post(client, CLIENT, sticky, "tok-alice", pos=first["pos"])
        assert status == 200, live
        assert entries(live["extensions"]["receipts"]["rooms"][ROOM]) == {("$e2", "m.read", BOB)}

        # long-poll: nothing new, then a receipt wakes it
        async def later() -> None:
            await asyncio.sleep(0.2)
            write(api, 5, BOB, "m.read", "$e3")
            async with api.feed.changed:
                api.feed.changed.notify_all()

        task = asyncio.create_task(later())
        started = time.monotonic()
        status, woken = await post(
            client, CLIENT, sticky, "tok-alice", pos=live["pos"], timeout=5000
        )
        await task
        assert 0.15 < time.monotonic() - started < 4
        assert entries(woken["extensions"]["receipts"]["rooms"][ROOM]) == {("$e3", "m.read", BOB)}

        # disabled: no extension; unknown positions: M_UNKNOWN_POS
        off = {"room_subscriptions": subs, "extensions": {"receipts": {"enabled": False}}}
        status, none = await post(client, CLIENT, off, "tok-alice", pos=woken["pos"])
        assert (status, none["extensions"]) == (200, {})
        status, err = await post(client, CLIENT, off, "tok-alice", pos=first["pos"])
        assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")
        status, err = await post(client, CLIENT, off, "tok-bob", pos=woken["pos"])
        assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")  # alice's, not bob's
        bad = {"room_subscriptions": {ROOM: {}}}
        status, err = await post(client, CLIENT, bad, "tok-alice")
        assert (status, err["errcode"]) == (400, "M_INVALID_PARAM")


async def test_client_form_expanded_timeline_sends_the_room_afresh(tmp_path: Path) -> None:
    api, _ = make_api(settings(tmp_path))
    for offset, event in enumerate(("$e1", "$e2", "$e3")):
        api.feed.index.apply_event(0, 2 + offset, ROOM, event, offset)
    ext = {"extensions": {"receipts": {"enabled": True}}}
    async with clients(api) as (client, _):
        body = {"room_subscriptions": {ROOM: {"timeline_limit": 1}}, **ext}
        status, first = await post(client, CLIENT, body, "tok-bob")
        assert status == 200 and first["extensions"]["receipts"]["rooms"] == {}
        body = {"room_subscriptions": {ROOM: {"timeline_limit": 3}}, **ext}
        status, wider = await post(client, CLIENT, body, "tok-bob", pos=first["pos"])
        assert entries(wider["extensions"]["receipts"]["rooms"][ROOM]) == {("$e1", "m.read", ALICE)}


# --- read-after-write --------------------------------------------------------------------------


async def test_sync_with_a_token_ahead_waits_for_this_process_to_catch_up(tmp_path: Path) -> None:
    """Another process handed out a token this one has not read up to: /sync waits (within
    its timeout) instead of answering from behind it; past the timeout it answers "nothing
    new" with the same token, never less."""
    api, _ = make_api(settings(tmp_path))
    ahead = api.feed.index.token()
    ahead = Token((ahead.receipts[0] + 1, *ahead.receipts[1:]), ahead.members)
    async with clients(api) as (client, _):
        params = {"since": ahead.encode(), "timeout": "300"}
        resp = await client.get("/_matrix/client/v3/sync", params=params, headers=bearer("tok-bob"))
        body = await resp.json()
        assert (resp.status, body) == (200, {"next_batch": ahead.encode(), "rooms": {"join": {}}})

        async def catch_up() -> None:
            await asyncio.sleep(0.2)
            write(api, 3, ALICE, "m.read", "$e3")  # what the token covers
            write(api, 4, ALICE, "m.read", "$e4")  # and one more after it
            async with api.feed.changed:
                api.feed.changed.notify_all()

        task = asyncio.create_task(catch_up())
        params = {"since": ahead.encode(), "timeout": "5000"}
        resp = await client.get("/_matrix/client/v3/sync", params=params, headers=bearer("tok-bob"))
        body = await resp.json()
        await task
        assert resp.status == 200, body
        [event] = body["rooms"]["join"][ROOM]["ephemeral"]["events"]
        assert entries(event) == {("$e4", "m.read", ALICE)}
        assert Token.decode(body["next_batch"]).reached(ahead)


async def test_sliding_sync_with_a_position_ahead_waits_for_this_process(tmp_path: Path) -> None:
    """A position another process answered at: this one waits to catch up, then answers
    the changes after it; past the timeout it answers the same pos with nothing."""
    ahead_api, _ = make_api(settings(tmp_path))
    behind_api, _ = make_api(settings(tmp_path))
    write(ahead_api, 3, ALICE, "m.read", "$e3")
    body = {"user_id": BOB, "conn_id": "c", "rooms": {ROOM: {"timeline": ["$e3"]}}}
    async with clients(ahead_api) as (_, ahead), clients(behind_api) as (_, behind):
        status, first = await post(ahead, INTERNAL, body, ADMIN_TOKEN)
        assert entries(first["receipts"]["rooms"][ROOM]) == {("$e3", "m.read", ALICE)}
        since = first["pos"]
        hs_state = {
            "user_id": BOB,
            "conn_id": "c",
            "pos": since,
            "timeout": 300,
            "rooms": {ROOM: {"status": "live"}},
        }
        status, idle = await post(behind, INTERNAL, hs_state, ADMIN_TOKEN)
        assert status == 200, idle
        assert idle == {"pos": since, "receipts": {"rooms": {}}, "cases": {}, "remember": {}}

        async def catch_up() -> None:
            await asyncio.sleep(0.2)
            write(behind_api, 3, ALICE, "m.read", "$e3")
            write(behind_api, 4, BOB, "m.read", "$e4")
            async with behind_api.feed.changed:
                behind_api.feed.changed.notify_all()

        task = asyncio.create_task(catch_up())
        status, live = await post(behind, INTERNAL, {**hs_state, "timeout": 5000}, ADMIN_TOKEN)
        await task
        assert status == 200, live
        assert live["cases"] == {ROOM: "live"}
        assert entries(live["receipts"]["rooms"][ROOM]) == {("$e4", "m.read", BOB)}


@pytest.mark.parametrize("path", [CLIENT, "/_matrix/client/v4/sync"])
async def test_client_form_needs_a_token_and_answers_cors(tmp_path: Path, path: str) -> None:
    api, _ = make_api(settings(tmp_path))
    async with clients(api) as (client, _):
        resp = await client.post(path, data=b"{}")
        assert resp.status == 401
        assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        status, body = await post(client, path, {}, "tok-alice")
        assert status == 200 and body["extensions"] == {}


async def test_client_form_room_leaving_and_reentering_the_window(tmp_path: Path) -> None:
    """As Element X drives it: a room subscribed, dropped while its receipts change, then
    subscribed again: it gets the changes since its own position, nothing older."""
    api, _ = make_api(settings(tmp_path))
    index = api.feed.index
    index.apply_membership(0, 2, OTHER, ALICE, "join")
    index.apply_membership(0, 3, OTHER, BOB, "join")
    ext = {"extensions": {"receipts": {"enabled": True}}}
    both = {"room_subscriptions": {ROOM: {"timeline_limit": 0}, OTHER: {"timeline_limit": 0}}}
    only_other = {"room_subscriptions": {OTHER: {"timeline_limit": 0}}}
    async with clients(api) as (client, _):
        status, first = await post(client, CLIENT, {**both, **ext}, "tok-bob")
        assert status == 200 and first["extensions"]["receipts"]["rooms"] == {}
        write(api, 3, ALICE, "m.read", "$e3")  # ROOM leaves the window from here
        status, out = await post(client, CLIENT, only_other, "tok-bob", pos=first["pos"])
        assert out["extensions"]["receipts"]["rooms"] == {}
        write(api, 4, ALICE, "m.read", "$e4", OTHER)
        status, out2 = await post(client, CLIENT, only_other, "tok-bob", pos=out["pos"])
        assert entries(out2["extensions"]["receipts"]["rooms"][OTHER]) == {("$e4", "m.read", ALICE)}
        write(api, 5, BOB, "m.read", "$e5")
        status, back = await post(client, CLIENT, both, "tok-bob", pos=out2["pos"])
        assert status == 200, back
        rooms = back["extensions"]["receipts"]["rooms"]
        assert set(rooms) == {ROOM}  # OTHER is live and unchanged
        assert entries(rooms[ROOM]) == {("$e3", "m.read", ALICE), ("$e5", "m.read", BOB)}
