"""Judges of a run's outputs against a reference fold of its inputs.

Each judge returns a list of readable violations (empty: the run is right on that count), so
a failing fault test says what went wrong and how often, not only that something did. Records
are aiokafka ConsumerRecords read with `read_committed`, in partition order (a room, and so a
table key, lives on one partition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from receipt_streams.core.deltas import apply_delta, table_view
from receipt_streams.core.ids import server_of
from receipt_streams.core.receipts import Receipt, ReceiptKey

SENTINEL = "@sentinel:hs1"
PRIVATE_TYPES = ("m.read.private", "m.fully_read")
Table = dict[tuple, dict[str, Any]]
Positions = Mapping[tuple[str, str], int]  # (room, event) -> stream_pos

# --- views of the outputs (also used by the single-worker crash test) ---------------------


def latest_per_key(records: Iterable[Any]) -> Table:
    """The changelog's last value per key (tombstones delete), sentinel left out."""
    table: Table = {}
    for m in records:
        key = tuple(orjson.loads(m.key))
        if key[1] == SENTINEL:
            continue
        if m.value is None:
            table.pop(key, None)
        else:
            table[key] = orjson.loads(m.value)
    return table


def latest_edu_entries(records: Iterable[Any], destination: str) -> dict[tuple, str]:
    """(room, user, thread) -> event, from the EDUs sent to `destination`, in order."""
    latest: dict[tuple, str] = {}
    for m in records:
        edu = orjson.loads(m.value)
        if edu["destination"] != destination:
            continue
        for room_id, by_type in edu["content"].items():
            for user_id, receipt in by_type.get("m.read", {}).items():
                if user_id != SENTINEL:
                    thread = receipt["data"].get("thread_id")
                    latest[(room_id, user_id, thread)] = receipt["event_ids"][0]
    return latest


def views_of(table: Table) -> dict[str, dict]:
    """Per room, the view one delta of all the table's entries would give."""
    rooms: dict[str, list] = {}
    for key, value in table.items():
        if key[1] == SENTINEL:
            continue
        rooms.setdefault(key[0], []).append(
            (
                ReceiptKey(*key),
                Receipt(value["event_id"], value.get("stream_pos"), value["ts"], value["data"]),
            )
        )
    return {room: table_view(entries) for room, entries in rooms.items()}


def views_from_deltas(records: Iterable[Any]) -> dict[str, dict]:
    """Per room, the view a consumer builds by applying every delta in order."""
    views: dict[str, dict] = {}
    for m in records:
        delta = orjson.loads(m.value)
        apply_delta(views.setdefault(delta["room_id"], {}), delta)
    for view in views.values():
        for slot in [k for k in view if k[0] == SENTINEL]:
            del view[slot]
    return views


# --- judges ---------------------------------------------------------------------------------


def _some(items: Sequence[str], n: int = 5) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


def judge_table(changelog: Iterable[Any], expected: Table) -> list[str]:
    """The changelog's last value per key equals the reference fold, key by key."""
    got = latest_per_key(changelog)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    older, newer, other = [], [], []
    for k in set(got) & set(expected):
        g, e = got[k], expected[k]
        if g == e:
            continue
        gp, ep = g.get("stream_pos"), e.get("stream_pos")
        line = f"{k}: {g['event_id']}@{gp}, expected {e['event_id']}@{ep}"
        if gp is not None and ep is not None and gp < ep:
            older.append(line)
        elif gp is not None and ep is not None and gp > ep:
            newer.append(line)
        else:
            other.append(f"{k}: {g}, expected {e}")
    out = []
    for what, items in (
        ("keys missing", [str(k) for k in missing]),
        ("keys not in the reference", [str(k) for k in extra]),
        ("keys older than the reference", older),
        ("keys newer than the reference", newer),
        ("keys with another value", other),
    ):
        if items:
            out.append(f"{len(items)} {what} (of {len(expected)}): {_some(sorted(items))}")
    return out


def judge_no_backward_steps(changelog: Iterable[Any]) -> list[str]:
    """Per key, stream_pos never decreases along the committed changelog."""
    last: dict[bytes, tuple[int, int, int]] = {}  # key -> (stream_pos, partition, offset)
    steps = []
    for m in changelog:
        if m.value is None:
            continue
        pos = orjson.loads(m.value).get("stream_pos")
        if pos is None:
            continue
        before = last.get(m.key)
        if before is not None and pos < before[0]:
            steps.append(
                f"{m.key.decode()}: pos {before[0]} (p{before[1]}@{before[2]}) "
                f"-> {pos} (p{m.partition}@{m.offset})"
            )
        last[m.key] = (pos, m.partition, m.offset)
    return (
        [f"{len(steps)} backward steps on the receipts changelog: {_some(steps)}"] if steps else []
    )


def judge_deltas(deltas: Iterable[Any], table: Table) -> list[str]:
    """Applying every delta in order gives the table's view, room by room and slot by slot."""
    got, want = views_from_deltas(deltas), views_of(table)
    wrong = []
    for room in sorted(set(got) | set(want)):
        g, w = got.get(room, {}), want.get(room, {})
        for slot in sorted(set(g) | set(w), key=str):
            if g.get(slot) != w.get(slot):
                wrong.append(f"{room} {slot}: deltas {g.get(slot)}, table {w.get(slot)}")
    if not wrong:
        return []
    return [f"{len(wrong)} slots where the deltas' view differs from the table: {_some(wrong)}"]


def _delta_slots(delta: Mapping[str, Any]) -> Iterable[tuple[tuple, str]]:
    """(user, type, thread) -> event for every entry a delta carries, in any part."""
    contents = [delta.get("receipt", {}).get("content", {})]
    contents += [e["content"] for e in (delta.get("private") or {}).values()]
    for content in contents:
        for event_id, by_type in content.items():
            for rtype, users in by_type.items():
                for user, data in users.items():
                    yield (user, rtype, data.get("thread_id")), event_id
    for user, event in (delta.get("account_data") or {}).items():
        yield (user, "m.fully_read", None), event["content"]["event_id"]


def judge_stale_deltas(deltas: Iterable[Any], positions: Positions) -> list[str]:
    """Per room, no delta brings a slot back to an older state than an earlier delta gave."""
    shown: dict[tuple, tuple[int, int]] = {}  # (room, slot) -> (stream_pos, seq shown at)
    stale = []
    for m in deltas:
        delta = orjson.loads(m.value)
        room, seq = delta["room_id"], delta["seq"]
        for slot, event_id in _delta_slots(delta):
            pos = positions.get((room, event_id))
            if pos is None or slot[0] == SENTINEL:
                continue
            before = shown.get((room, slot))
            if before is not None and pos < before[0]:
                stale.append(
                    f"{room} {slot}: seq {seq} brings pos {pos} after seq {before[1]} "
                    f"gave pos {before[0]}"
                )
            else:
                shown[(room, slot)] = (pos, seq)
    return [f"{len(stale)} stale delta entries: {_some(stale)}"] if stale else []


def judge_edus(
    edus: Iterable[Any], table: Table, server_name: str, destinations: Iterable[str]
) -> list[str]:
    """For each destination, the latest EDU entry per (room, user, thread) equals the table's
    m.read of the local users."""
    records = list(edus)
    want = {
        (k[0], k[1], k[3]): v["event_id"]
        for k, v in table.items()
        if k[2] == "m.read" and server_of(k[1]) == server_name and k[1] != SENTINEL
    }
    out = []
    for dest in destinations:
        got = latest_edu_entries(records, dest)
        wrong = [
            f"{k}: EDU {got.get(k)}, table {want.get(k)}"
            for k in sorted(set(got) | set(want), key=str)
            if got.get(k) != want.get(k)
        ]
        if wrong:
            out.append(f"{dest}: {len(wrong)} of {len(want)} entries differ: {_some(wrong)}")
    return out


def judge_private(deltas: Iterable[Any], edus: Iterable[Any]) -> list[str]:
    """Nothing private on a public part or in an EDU; private parts hold their owner's only."""
    leaks = []
    for m in deltas:
        delta = orjson.loads(m.value)
        where = f"{delta['room_id']} seq {delta['seq']}"
        for event_id, by_type in delta.get("receipt", {}).get("content", {}).items():
            for rtype in set(by_type) & set(PRIVATE_TYPES):
                leaks.append(f"{where}: {rtype} on {event_id} in the public part")
        for owner, event in (delta.get("private") or {}).items():
            for by_type in event["content"].values():
                for rtype, users in by_type.items():
                    if rtype != "m.read.private" or set(users) != {owner}:
                        leaks.append(f"{where}: private[{owner}] holds {rtype} of {sorted(users)}")
        for owner, event in (delta.get("account_data") or {}).items():
            if event.get("type") != "m.fully_read":
                leaks.append(f"{where}: account_data[{owner}] holds {event.get('type')}")
    for m in edus:
        edu = orjson.loads(m.value)
        for room_id, by_type in edu["content"].items():
            for rtype in set(by_type) - {"m.read"}:
                leaks.append(f"EDU to {edu['destination']}: {rtype} in {room_id}")
    return [f"{len(leaks)} private leaks: {_some(leaks)}"] if leaks else []


def judge_acknowledged(
    acked: Iterable[Mapping[str, Any]], table: Table, positions: Positions
) -> list[str]:
    """Every receipt answered 200 is in the table, or superseded there by a later event."""
    lost = []
    for r in acked:
        key = (r["room_id"], r["user_id"], r["receipt_type"], r.get("thread_id"))
        pos = positions[(r["room_id"], r["event_id"])]
        held = table.get(key)
        if held is None or (held.get("stream_pos") or -1) < pos:
            lost.append(f"{key} {r['event_id']}@{pos}: table has {held}")
    return [f"{len(lost)} acknowledged receipts not in the table: {_some(lost)}"] if lost else []


async def judge_groups(bootstrap: str, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """Every consumer group has committed every partition of its topics up to the end (a
    caught-up read_committed group stands past the last commit marker: at the end offset)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in sorted({t for ts in groups.values() for t in ts})
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(tps)
        out = []
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            behind = []
            for tp in tps:
                if tp.topic not in topics or ends[tp] == 0:
                    continue
                at = committed[tp].offset if tp in committed else None
                if at != ends[tp]:
                    behind.append(f"{tp.topic}[{tp.partition}] at {at} of {ends[tp]}")
            if behind:
                out.append(
                    f"group {group}: {len(behind)} partitions not at the end: {_some(behind)}"
                )
        return out
    finally:
        await admin.close()
        await consumer.stop()
