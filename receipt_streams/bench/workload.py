"""A realistic, repeatable receipts workload.

Room sizes follow a Zipf-like law (a few rooms with thousands of members, most with a
handful); users live on several servers; events have growing stream positions; receipts come
from local users, mostly moving forward, 80% m.read / 15% m.read.private / 5% m.fully_read,
10% threaded. The same seed gives the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MIX = (("m.read", 0.80), ("m.read.private", 0.15), ("m.fully_read", 0.05))


@dataclass(frozen=True)
class WorkloadSpec:
    receipts: int = 50_000
    rooms: int = 300
    max_room_size: int = 2_000
    zipf_s: float = 1.1
    users: int = 5_000
    servers: int = 8  # server 0 is the local one
    local_share: float = 0.6
    events_per_room: int = 40
    threaded: float = 0.10
    seed: int = 1


@dataclass
class RoomPlan:
    room_id: str
    members: list[str]
    local_members: list[str]
    main_events: list[str] = field(default_factory=list)
    thread_root: str = ""
    thread_events: list[str] = field(default_factory=list)
    weight: float = 1.0


class Workload:
    def __init__(self, spec: WorkloadSpec, local_server: str) -> None:
        self.spec = spec
        self.local = local_server
        rnd = random.Random(spec.seed)
        servers = [local_server] + [f"remote{i}.example" for i in range(1, spec.servers)]
        self.users = [
            f"@u{i}:{servers[0] if rnd.random() < spec.local_share else rnd.choice(servers[1:])}"
            for i in range(spec.users)
        ]
        self.rooms: list[RoomPlan] = []
        pos = 0
        self.positions: dict[tuple[str, str], int] = {}
        self.setup: list[tuple[str, dict[str, Any]]] = []  # ("membership"|"events", value)
        for r in range(spec.rooms):
            size = max(2, min(spec.users, int(spec.max_room_size / (r + 1) ** spec.zipf_s)))
            members = rnd.sample(self.users, size)
            local = [u for u in members if u.endswith(":" + local_server)]
            if not local:  # every room has someone who sends receipts
                local = [f"@owner{r}:{local_server}"]
                members.append(local[0])
            room = RoomPlan(f"!room{r}:{local_server}", members, local, weight=size)
            for user in members:
                pos += 1
                self.setup.append(
                    (
                        "membership",
                        {
                            "room_id": room.room_id,
                            "user_id": user,
                            "membership": "join",
                            "stream_pos": pos,
                        },
                    )
                )
            room.thread_root = f"$r{r}root"
            for e in range(spec.events_per_room):
                pos += 1
                event_id = f"$r{r}e{e}" if e else room.thread_root
                value: dict[str, Any] = {
                    "room_id": room.room_id,
                    "event_id": event_id,
                    "sender": rnd.choice(members),
                    "stream_pos": pos,
                    "origin_server_ts": 1_700_000_000_000 + pos,
                }
                if e and rnd.random() < 0.2:
                    value["relates_to"] = {"rel_type": "m.thread", "event_id": room.thread_root}
                    room.thread_events.append(event_id)
                else:
                    room.main_events.append(event_id)
                self.positions[(room.room_id, event_id)] = pos
                self.setup.append(("events", value))
            self.rooms.append(room)
        self._rnd = rnd
        self._weights = [room.weight for room in self.rooms]

    def receipt(self, n: int, ts: int) -> dict[str, Any]:
        """The n-th receipt of the stream (deterministic for a seed, given the same n order)."""
        rnd, spec = self._rnd, self.spec
        room = rnd.choices(self.rooms, self._weights)[0]
        user = rnd.choice(room.local_members)
        rtype = rnd.choices([t for t, _ in MIX], [w for _, w in MIX])[0]
        threaded = rtype != "m.fully_read" and room.thread_events and rnd.random() < spec.threaded
        events = room.thread_events if threaded else room.main_events
        # Readers mostly move forward: aim near the stream's progress, sometimes behind it.
        target = int(n / max(1, spec.receipts) * len(events)) + rnd.randint(-2, 1)
        event_id = events[min(max(target, 0), len(events) - 1)]
        value: dict[str, Any] = {
            "room_id": room.room_id,
            "user_id": user,
            "receipt_type": rtype,
            "event_id": event_id,
            "ts": ts,
        }
        if threaded:
            value["thread_id"] = room.thread_root
        return value

    def receipts(self, start_ts: int = 1_700_000_000_000) -> Iterator[dict[str, Any]]:
        for n in range(self.spec.receipts):
            yield self.receipt(n, start_ts + n)

    def local_users(self) -> list[str]:
        return sorted({u for room in self.rooms for u in room.local_members})
