"""`ctl purge-room` and `ctl erase-user`: write an admin command for the fold.

The fold is partitioned by room, so a room purge is one record keyed by the room (it lands
on the room's partition, like the room's receipts). A user erasure concerns every room, so
every partition must see it: the command is written once per partition of the admin topic,
keyed by the user, each copy clearing that partition's rooms. The copies are written in one
transaction, so either every partition gets the erasure or none does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from receipt_streams.config import Settings
from receipt_streams.core import ids
from receipt_streams.ops.kafka import consumer, partitions, started
from receipt_streams.ops.output import CtlError


def command(kind: str, target: str, reason: str | None, now_ms: int) -> dict[str, Any]:
    """The command record's value; the target is checked as the fold will check it."""
    try:
        if kind == "purge_room":
            ids.validate_room_id(target)
        else:
            ids.validate_user_id(target)
    except ids.InvalidId as exc:
        raise CtlError(
            f"{target!r}: {exc}", "pass a full room ID (!...) or user ID (@...)"
        ) from None
    field = "room_id" if kind == "purge_room" else "user_id"
    value: dict[str, Any] = {"command": kind, field: target, "ts": now_ms}
    if reason:
        value["reason"] = reason[:1024]
    return value


async def send_command(s: Settings, kind: str, target: str, reason: str | None) -> dict[str, Any]:
    """Write the command (one record, or one per partition for an erasure) and wait for it
    to be committed. Returns what was written."""
    value = command(kind, target, reason, int(time.time() * 1000))
    async with started(consumer(s)) as c:
        parts = await partitions(c, s.topic_admin)
    # erase_user: one copy per partition; purge_room: the room's partition (the default
    # partitioner, murmur2 of the key, as for every room-keyed input).
    targets: list[int | None] = list(parts) if kind == "erase_user" else [None]
    producer = AIOKafkaProducer(
        bootstrap_servers=s.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        transactional_id=f"{s.app_id}-ctl-admin-{uuid.uuid4().hex[:8]}",
    )
    written: list[dict[str, int]] = []
    async with started(producer) as p:
        async with p.transaction():
            futures = [
                await p.send(s.topic_admin, orjson.dumps(value), key=target.encode(), partition=at)
                for at in targets
            ]
        for fut in futures:
            meta = await fut
            written.append({"partition": meta.partition, "offset": meta.offset})
    return {"topic": s.topic_admin, "command": value, "written": written}


def render(result: dict[str, Any]) -> str:
    cmd = result["command"]
    target = cmd.get("room_id") or cmd.get("user_id")
    where = ", ".join(f"{w['partition']}:{w['offset']}" for w in result["written"])
    return (
        f"{cmd['command']} {target}: written to {result['topic']} at {where}\n"
        "the workers apply it as they reach it (ctl status shows their lag); the receipts "
        "changelog then holds tombstones for every removed receipt"
    )
