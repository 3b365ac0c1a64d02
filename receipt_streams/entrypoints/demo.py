"""`receipt-streams demo-seed`: a demo room on the input topics, for the README walk-through.

A homeserver normally writes membership and events; this stands in for it: room
`!demo:localhost` with @alice and @bob joined and five events `$demo1` .. `$demo5`.
"""

from __future__ import annotations

import time

import orjson
from aiokafka import AIOKafkaProducer

from receipt_streams.config import Settings

ROOM = "!demo:localhost"
USERS = ("@alice:localhost", "@bob:localhost")


def demo_records(s: Settings) -> list[tuple[str, dict]]:
    base = int(time.time() * 1000)  # stream positions grow across repeated seeds
    records = [
        (
            s.topic_membership,
            {"room_id": ROOM, "user_id": user, "membership": "join", "stream_pos": base + i},
        )
        for i, user in enumerate(USERS)
    ]
    records += [
        (
            s.topic_events,
            {
                "room_id": ROOM,
                "event_id": f"$demo{i}",
                "sender": USERS[0],
                "stream_pos": base + 10 + i,
                "origin_server_ts": base + i,
            },
        )
        for i in range(1, 6)
    ]
    return records


async def seed(s: Settings) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    await producer.start()
    try:
        records = demo_records(s)
        for topic, value in records:
            await producer.send_and_wait(topic, orjson.dumps(value), key=ROOM.encode())
    finally:
        await producer.stop()
    return len(records)
