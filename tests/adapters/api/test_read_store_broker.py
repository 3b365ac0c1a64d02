"""An API process with its view on disk (`RECEIPT_STREAMS_READ_STORE=rocksdb`), on the real
broker: it answers /sync and sliding sync like the in-memory one, and after a restart it is
ready from its local copy, reading only the changelog records it had not."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import orjson

from tests.support.http import Client, receipts_in
from tests.support.scenario import Room, pass_barrier
from tests.support.worker import WorkerProcess, free_port, produce, worker_settings

ALICE, BOB = "@alice:hs1", "@bob:hs1"
SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


async def wait_for_sync(bob: Client, room: str, event: str, timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = await bob.sync()
        if receipts_in(body, room).get((ALICE, "m.read", None)) == event:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"no {event} in {body}"
        await asyncio.sleep(0.2)


async def test_api_on_disk_restarts_from_its_local_copy(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_bytes(orjson.dumps({"tok-alice": ALICE, "tok-bob": BOB}))
    s = worker_settings(kafka_bootstrap, tmp_path, tokens_file=tokens, serve_api=False)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    api_s = s.model_copy(
        update={
            "web_port": free_port(),
            "admin_port": free_port(),
            "serve_api": True,
            "data_dir": tmp_path / "api",
            "read_store": "rocksdb",
            "read_store_memory_bytes": 8 * 2**20,
        }
    )
    api = WorkerProcess(api_s, tmp_path / "api.log", "api").start()
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in (worker, api)))
        room = Room(s, "!disk:hs1")
        events = [f"$e{n}" for n in range(30)]
        await produce(
            kafka_bootstrap,
            [room.member(ALICE), room.member(BOB)] + [room.event(e) for e in events],
        )
        await pass_barrier(kafka_bootstrap, room, s.topic_dlq)
        base = f"http://127.0.0.1:{api_s.web_port}"
        async with aiohttp.ClientSession() as session:
            alice, bob = Client(session, base, "tok-alice"), Client(session, base, "tok-bob")
            for event in events[:20]:
                assert (await alice.receipt(room.room_id, "m.read", event))[0] == 200
            before = await wait_for_sync(bob, room.room_id, events[19])

            assert api.stop() == 0, api.tail()
            assert "read store closed" in api.tail(5), "closed before the process exits"
            for event in events[20:25]:  # while the API is down: folded by the worker
                await produce(kafka_bootstrap, [room.receipt(ALICE, "m.read", event, 1)])
            api.start()
            await asyncio.to_thread(api.wait_ready)
            # Every earlier token still works; the restart read only what came after its copy.
            after = await wait_for_sync(bob, room.room_id, events[24])
            incremental = await bob.sync(before["next_batch"])
            assert receipts_in(incremental, room.room_id) == {(ALICE, "m.read", None): events[24]}
            starts = re.findall(r"sync feed starting: (\d+) of (\d+)", api.log_path.read_text())
            assert len(starts) == 2 and starts[0][0] == "0", starts
            local, end = map(int, starts[1])
            assert 20 <= local < end, starts  # the copy had the first 20; read the rest only
            status, sliding = await bob.request(
                "POST",
                SLIDING,
                {
                    "room_subscriptions": {room.room_id: {"timeline_limit": 10}},
                    "extensions": {"receipts": {"enabled": True}},
                },
            )
            assert status == 200, sliding
            content = sliding["extensions"]["receipts"]["rooms"][room.room_id]["content"]
            assert content == {events[24]: {"m.read": {ALICE: {"ts": 1}}}}
            assert after["next_batch"] != before["next_batch"]
    finally:
        api.stop()
        worker.stop()
