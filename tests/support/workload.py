"""A random but clash-free receipt workload, and an independent reference fold for it.

Unthreaded receipts, `main`-threaded receipts and thread receipts target disjoint sets of
events, so no delta ever has to hide a threaded receipt behind an unthreaded one (MSC4102):
the view rebuilt from deltas must then equal the table's view exactly.

Optionally, valid inbound federation EDUs from `@remote:hs2` and `@remote:hs3` (joined to every
room) follow the same plan: remote m.read receipts that the reference folds too.
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
    inbound: list[tuple[str, bytes, dict]] = field(default_factory=list)  # federation EDUs
    positions: dict[tuple[str, str], int] = field(default_factory=dict)  # (room, event) -> pos


def build_workload(
    settings: Any, seed: int, rooms: int, users: int, events: int, receipts: int, edus: int = 0
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
    for n in range(edus):
        room = rnd.choice(w.rooms)
        origin = rnd.choice(["hs2", "hs3"])
        kind = rnd.choice(["unthreaded", "main", "$root"])
        choices = plan[room.room_id][kind]
        target = int(n / edus * len(choices)) + rnd.randint(-3, 1)
        event_id = choices[min(max(target, 0), len(choices) - 1)]
        data: dict[str, Any] = {"ts": 2_000_000 + n}
        if kind != "unthreaded":
            data["thread_id"] = kind
        entry = {"event_ids": [event_id], "data": data}
        content = {room.room_id: {"m.read": {f"@remote:{origin}": entry}}}
        edu = {
            "origin": origin,
            "received_ts": n,
            "edu": {"edu_type": "m.receipt", "content": content},
        }
        w.inbound.append((settings.topic_federation, origin.encode(), edu))
    return w


def reference_table(w: Workload) -> dict[tuple, dict[str, Any]]:
    """The reference fold of the workload's client receipts and inbound EDUs."""
    return reference_fold([r for _, _, r in w.receipts], remote_entries(w.inbound), w.positions)


def remote_entries(inbound: list[tuple[str, bytes, dict]]) -> list[dict[str, Any]]:
    """The inbound EDUs' m.read entries as receipts, in arrival order."""
    out = []
    for _, _, edu in inbound:
        for room_id, by_type in edu["edu"]["content"].items():
            for user_id, entry in by_type.get("m.read", {}).items():
                data = entry["data"]
                receipt = {"room_id": room_id, "user_id": user_id, "receipt_type": "m.read"}
                receipt |= {"event_id": entry["event_ids"][0], "ts": data["ts"], "data": data}
                if isinstance(data.get("thread_id"), str):
                    receipt["thread_id"] = data["thread_id"]
                out.append(receipt)
    return out


def reference_fold(
    receipts: list[dict[str, Any]],
    remote: list[dict[str, Any]],
    positions: dict[tuple[str, str], int],
) -> dict[tuple, dict[str, Any]]:
    """Per slot, the receipt on the event with the highest stream position (first arrival
    wins among receipts for the same event): the rule, written independently of the core.
    Client receipts carry `ts` and `thread_id`; remote ones keep their `data` as sent."""
    table: dict[tuple, dict[str, Any]] = {}
    for r in [*receipts, *remote]:
        key = (r["room_id"], r["user_id"], r["receipt_type"], r.get("thread_id"))
        pos = positions[(r["room_id"], r["event_id"])]
        current = table.get(key)
        if current is None or pos > current["stream_pos"]:
            data = r.get("data") or (
                {"ts": r["ts"]}
                if "thread_id" not in r
                else {"ts": r["ts"], "thread_id": r["thread_id"]}
            )
            table[key] = {"event_id": r["event_id"], "stream_pos": pos, "ts": r["ts"], "data": data}
    return table
