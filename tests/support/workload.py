"""A random but clash-free receipt workload, and an independent reference fold for it.

Unthreaded receipts, `main`-threaded receipts and thread receipts target disjoint sets of
events, so no delta ever has to hide a threaded receipt behind an unthreaded one (MSC4102):
the view rebuilt from deltas must then equal the table's view exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tests.support.scenario import Room


@dataclass
class Workload:
    rooms: list[Room]
    setup: list[tuple[str, bytes, dict]] = field(default_factory=list)
    receipts: list[tuple[str, bytes, dict]] = field(default_factory=list)
    positions: dict[tuple[str, str], int] = field(default_factory=dict)  # (room, event) -> pos


def build_workload(
    settings: Any, seed: int, rooms: int, users: int, events: int, receipts: int
) -> Workload:
    rnd = random.Random(seed)
    w = Workload([Room(settings, f"!crash{r}:hs1") for r in range(rooms)])
    plan: dict[str, dict[str, list[str]]] = {}
    for room in w.rooms:
        w.setup += [room.member(f"@u{u}:hs1") for u in range(users)]
        w.setup += [room.member(f"@remote:hs{n}") for n in (2, 3)]  # federation destinations
        w.setup.append(room.member("@sentinel:hs1"))  # last: its receipt is the barrier
        kinds: dict[str, list[str]] = {"unthreaded": [], "main": [], "$root": []}
        w.setup.append(room.event("$root"))
        kinds["unthreaded"].append("$root")
        for i in range(events):
            kind = rnd.choice(["unthreaded", "main", "$root"])
            event_id = f"$ev{i}"
            w.setup.append(
                room.event(event_id, relates_to=("m.thread", "$root") if kind == "$root" else None)
            )
            kinds[kind].append(event_id)
        plan[room.room_id] = kinds
        for _, _, value in w.setup:
            if "event_id" in value and "receipt_type" not in value:
                w.positions[(value["room_id"], value["event_id"])] = value["stream_pos"]
    for n in range(receipts):
        room = rnd.choice(w.rooms)
        user = f"@u{rnd.randrange(users)}:hs1"
        rtype = rnd.choices(["m.read", "m.read.private", "m.fully_read"], [80, 15, 5])[0]
        kind = (
            "unthreaded" if rtype == "m.fully_read" else rnd.choice(["unthreaded", "main", "$root"])
        )
        # Readers mostly move forward: aim near the stream's progress, sometimes behind it.
        choices = plan[room.room_id][kind]
        target = int(n / receipts * len(choices)) + rnd.randint(-3, 1)
        event_id = choices[min(max(target, 0), len(choices) - 1)]
        thread = None if kind == "unthreaded" else kind
        w.receipts.append(room.receipt(user, rtype, event_id, 1_000_000 + n, thread))
    return w


def reference_table(w: Workload) -> dict[tuple, dict[str, Any]]:
    """Per slot, the receipt on the event with the highest stream position (first arrival
    wins among receipts for the same event): the rule, written independently of the core."""
    table: dict[tuple, dict[str, Any]] = {}
    for _, _, r in w.receipts:
        key = (r["room_id"], r["user_id"], r["receipt_type"], r.get("thread_id"))
        pos = w.positions[(r["room_id"], r["event_id"])]
        current = table.get(key)
        if current is None or pos > current["stream_pos"]:
            data = (
                {"ts": r["ts"]}
                if "thread_id" not in r
                else {"ts": r["ts"], "thread_id": r["thread_id"]}
            )
            table[key] = {"event_id": r["event_id"], "stream_pos": pos, "ts": r["ts"], "data": data}
    return table
