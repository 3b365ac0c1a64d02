"""Federation rules for `m.receipt` EDUs (CONTRACT §4.6-7, server-server spec).

Inbound: an EDU is split into one candidate per (room, receipt type, user) entry; each entry is
checked on its own so a bad one never sinks the rest. What needs no room state is checked
here; "does the origin have a joined member in the room" is checked on the room's partition.

Outbound: local users' `m.read` changes wait per destination, coalesced by
(room, type, user, thread), and leave as EDUs whose content holds one receipt per
(room, user): the same user in two threads needs two EDUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from receipt_streams.core import ids
from receipt_streams.core.dlq import EntryReject
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason
from receipt_streams.core.receipts import Receipt, ReceiptKey

FEDERATED_TYPE = "m.read"
MAX_INT64 = 2**63 - 1  # the spec's `ts` is an int64
MAX_EDU_BYTES = 65_536  # MSC4514: an EDU is at most 64 KiB of canonical JSON


class EduShare(NamedTuple):
    """What an entry routed to its room's partition knows of its EDU: the EDU's sha256 and
    size, and the DLQ bytes a rejection of the entry there may take (its share of twice the
    EDU's size, what the EDU's other rejected parts left; 0: counted, not written)."""

    sha256: str
    size: int
    dlq_bytes: int

    @classmethod
    def parse(cls, raw: Any) -> EduShare | None:
        """From the internal record; None when absent or not in this shape."""
        if not isinstance(raw, dict):
            return None
        sha, size, dlq = raw.get("sha256"), raw.get("size"), raw.get("dlq_bytes")
        if not (isinstance(sha, str) and len(sha) == 64 and type(size) is int):
            return None
        if type(dlq) is not int or dlq < 0:
            return None
        return cls(sha, size, dlq)


class RemoteReceipt(NamedTuple):
    """One accepted entry of an inbound EDU, routed to its room's partition."""

    origin: str
    room_id: str
    user_id: str
    event_id: str
    data: Mapping[str, Any]
    edu: EduShare | None = None

    @property
    def key(self) -> ReceiptKey:
        thread = self.data.get("thread_id")
        return ReceiptKey(self.room_id, self.user_id, FEDERATED_TYPE, thread)

    def receipt(self, stream_pos: int | None) -> Receipt:
        return Receipt(self.event_id, stream_pos, self.data["ts"], self.data)

    def encode(self) -> bytes:
        record = {
            "origin": self.origin,
            "room_id": self.room_id,
            "user_id": self.user_id,
            "event_id": self.event_id,
            "data": self.data,
        }
        if self.edu is not None:
            record["edu"] = self.edu._asdict()
        return orjson.dumps(record)

    @classmethod
    def decode(cls, raw: bytes) -> RemoteReceipt:
        d = orjson.loads(raw)
        edu = EduShare.parse(d.get("edu"))
        return cls(d["origin"], d["room_id"], d["user_id"], d["event_id"], d["data"], edu)

    @classmethod
    def parse(cls, raw: bytes | None) -> RemoteReceipt | Rejection:
        """An entry from the internal stream, checked again like an EDU entry: anyone who
        can write to the broker can write there, and a bug must not be folded."""
        try:
            d = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            return Rejection(Reason.NOT_JSON, "value is not a UTF-8 JSON object")
        if not isinstance(d, dict) or not all(
            isinstance(d.get(k), str) for k in ("origin", "room_id", "user_id", "event_id")
        ):
            return Rejection(Reason.BAD_SHAPE, "origin, room_id, user_id, event_id: strings")
        try:
            ids.validate_server_name(d["origin"])
            ids.validate_room_id(d["room_id"])
        except ids.InvalidId as exc:
            return Rejection(Reason.BAD_ID, str(exc))
        entry = {"event_ids": [d["event_id"]], "data": d.get("data")}
        out = _entry(d["origin"], d["room_id"], d["user_id"], entry)
        if isinstance(out, Rejection):
            return out
        return out._replace(edu=EduShare.parse(d.get("edu")))


EntryRejection = EntryReject  # a rejected part of an EDU: path, the part as sent, why


def _entry(origin: str, room_id: str, user_id: str, entry: Any) -> RemoteReceipt | Rejection:
    try:
        ids.validate_user_id(user_id)
    except ids.InvalidId as exc:
        return Rejection(Reason.BAD_ID, str(exc))
    if ids.server_of(user_id) != origin:
        return Rejection(Reason.ORIGIN_MISMATCH, f"{user_id} is not on origin {origin}")
    if not isinstance(entry, dict):
        return Rejection(Reason.BAD_SHAPE, "receipt entry is not an object")
    event_ids, data = entry.get("event_ids"), entry.get("data")
    if not isinstance(event_ids, list) or len(event_ids) != 1:
        return Rejection(Reason.BAD_SHAPE, "event_ids must be a list of exactly one event ID")
    if (
        not isinstance(data, dict)
        or type(data.get("ts")) is not int
        or not 0 <= data["ts"] <= MAX_INT64
    ):
        return Rejection(Reason.BAD_SHAPE, "data.ts must be a non-negative int64")
    try:
        event_id = ids.validate_event_id(event_ids[0])
    except ids.InvalidId as exc:
        return Rejection(Reason.BAD_ID, str(exc))
    data = dict(data)  # the remote ts and extras as sent ...
    thread = data.get("thread_id")
    if not isinstance(thread, str) or not thread:
        data.pop("thread_id", None)  # ... but a non-string thread_id means unthreaded
    elif not ids.valid_thread_id(thread):
        return Rejection(Reason.INVALID_THREAD, "data.thread_id must be main or an event ID")
    try:
        orjson.dumps(data)  # e.g. an int over 64 bits: it could not reach the room's partition
    except orjson.JSONEncodeError as exc:
        return Rejection(Reason.BAD_SHAPE, f"data cannot be kept as JSON: {exc}")
    return RemoteReceipt(origin, room_id, user_id, event_id, data)


def split_edu(
    origin: str, content: Mapping[str, Any]
) -> tuple[list[RemoteReceipt], list[EntryReject]]:
    """Every entry of an EDU's content: the acceptable ones, and the refused parts (an
    entry, or a whole room or type when that level is already wrong) and why."""
    accepted: list[RemoteReceipt] = []
    rejected: list[EntryReject] = []
    for room_id, by_type in content.items():
        try:
            ids.validate_room_id(room_id)
        except ids.InvalidId as exc:
            rejected.append(EntryReject((room_id,), by_type, Rejection(Reason.BAD_ID, str(exc))))
            continue
        if not isinstance(by_type, dict):
            why = Rejection(Reason.BAD_SHAPE, "room entry is not an object")
            rejected.append(EntryReject((room_id,), by_type, why))
            continue
        for receipt_type, by_user in by_type.items():
            path = (room_id, receipt_type)
            if receipt_type != FEDERATED_TYPE:
                why = Rejection(Reason.BAD_RECEIPT_TYPE, f"{receipt_type!r} is not federated")
                rejected.append(EntryReject(path, by_user, why))
                continue
            if not isinstance(by_user, dict):
                why = Rejection(Reason.BAD_SHAPE, "users entry is not an object")
                rejected.append(EntryReject(path, by_user, why))
                continue
            for user_id, entry in by_user.items():
                out = _entry(origin, room_id, user_id, entry)
                if isinstance(out, Rejection):
                    rejected.append(EntryReject((*path, user_id), entry, out))
                else:
                    accepted.append(out)
    return accepted, rejected


# --- outbound --------------------------------------------------------------------------


def outbox_record(key: ReceiptKey, value: Receipt, destinations: Iterable[str]) -> bytes:
    """A local m.read change and where it must go (computed from the room's servers then)."""
    return orjson.dumps(
        {
            "room_id": key.room_id,
            "user_id": key.user_id,
            "thread_id": key.thread_id,
            "event_id": value.event_id,
            "data": value.data,
            "destinations": sorted(destinations),
        }
    )


Slot = tuple[str, str, str | None]  # (room, user, thread); the type is always m.read


@dataclass
class OutboundQueue:
    """Pending receipts per destination, coalesced, with per-room pacing for big rooms.

    A room with at least `large_room_servers` destinations is flushed at most once per
    `large_room_interval_ms`, so one busy room cannot wake every server at its own pace;
    smaller rooms go out at the next flush. `origin` is this server's name.
    """

    origin: str
    large_room_servers: int = 10
    large_room_interval_ms: int = 200
    pending: dict[str, dict[Slot, tuple[str, Mapping[str, Any], Any]]] = field(default_factory=dict)
    _room_size: dict[str, int] = field(default_factory=dict)
    _room_flushed: dict[str, int] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any], source: Any = None) -> None:
        """Queue one outbox record; `source` (e.g. an offset) is kept to know what is done."""
        slot = (record["room_id"], record["user_id"], record["thread_id"])
        self._room_size[record["room_id"]] = len(record["destinations"])
        value = (record["event_id"], record["data"], source)  # one, shared by destinations
        for destination in record["destinations"]:
            if destination == self.origin:
                continue
            self.pending.setdefault(destination, {})[slot] = value

    def _due(self, room_id: str, now_ms: int) -> bool:
        if self._room_size.get(room_id, 0) < self.large_room_servers:
            return True
        return now_ms - self._room_flushed.get(room_id, -(10**15)) >= self.large_room_interval_ms

    def flush(self, now_ms: int) -> list[dict[str, Any]]:
        """The EDUs due now, one dict per EDU in the `federation.edus.v1` shape, each at most
        64 KiB of canonical JSON with its destination and origin (MSC4514)."""
        due_rooms = {
            slot[0]
            for slots in self.pending.values()
            for slot in slots
            if self._due(slot[0], now_ms)
        }
        edus: list[dict[str, Any]] = []
        entries: dict[int, tuple[Any, dict[str, Any], int]] = {}  # an entry per value, shared
        for destination in sorted(self.pending):
            slots = self.pending[destination]
            ready = {s: v for s, v in slots.items() if s[0] in due_rooms}
            for s in ready:
                del slots[s]
            envelope = {"destination": destination, "origin": self.origin, "edu_type": "m.receipt"}
            room = MAX_EDU_BYTES - (canonical_size({**envelope, "content": {}}) - 2)
            edus += [{**envelope, "content": c} for c in edu_contents(ready, entries, room)]
            if not slots:
                del self.pending[destination]
        for room_id in due_rooms:
            self._room_flushed[room_id] = now_ms
        self._forget_idle_rooms(now_ms)
        return edus

    def _forget_idle_rooms(self, now_ms: int) -> None:
        """Keep pacing state only for rooms that are pending or still inside their interval,
        so the relay's memory follows the active rooms, not every room ever seen."""
        pending = {slot[0] for slots in self.pending.values() for slot in slots}
        for room_id in list(self._room_size):
            recent = (
                now_ms - self._room_flushed.get(room_id, -(10**15)) < self.large_room_interval_ms
            )
            if room_id not in pending and not recent:
                self._room_size.pop(room_id, None)
                self._room_flushed.pop(room_id, None)

    def pending_sources(self) -> list[Any]:
        return [v[2] for slots in self.pending.values() for v in slots.values()]


def canonical_size(value: Any) -> int:
    """Bytes of `value` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    return len(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


_ROOM_VALUE = len(b'{"m.read":{}}')


def edu_contents(
    entries: Mapping[Slot, tuple[str, Mapping[str, Any], Any]],
    made: dict[int, tuple[Any, dict[str, Any], int]] | None = None,
    max_bytes: int = MAX_EDU_BYTES,
) -> list[dict]:
    """EDU contents for one destination, each at most `max_bytes` of canonical JSON, with
    one receipt per (room, user) in each, so a user with receipts in k threads of a room
    spreads over k EDUs. `made` lets the destinations of one flush share each receipt's
    entry and its size (entries are only serialised, never changed). A receipt too large
    for an EDU of its own still goes, alone (local receipts are far smaller)."""
    made = {} if made is None else made
    layers: list[list[tuple[str, str, dict[str, Any], int]]] = []
    depth: dict[tuple[str, str], int] = {}
    for (room_id, user_id, _thread), value in sorted(
        entries.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        n = depth.get((room_id, user_id), 0)
        depth[(room_id, user_id)] = n + 1
        if n == len(layers):
            layers.append([])
        known = made.get(id(value))
        if known is None:
            event_id, data, _src = value
            entry = {"event_ids": [event_id], "data": dict(data)}
            # The value is kept with its entry: alive, its id cannot be reused meanwhile.
            known = made[id(value)] = (value, entry, canonical_size(entry))
        layers[n].append((room_id, user_id, known[1], known[2]))
    contents: list[dict] = []
    for layer in layers:
        content: dict[str, Any] = {}
        size = 2  # {}
        for room_id, user_id, entry, entry_size in layer:
            user = len(orjson.dumps(user_id)) + 1 + entry_size  # "user":entry
            users = content.get(room_id)
            if users is None:
                grow = (1 if content else 0) + len(orjson.dumps(room_id)) + 1 + _ROOM_VALUE + user
            else:
                grow = 1 + user
            if content and size + grow > max_bytes:
                contents.append(content)
                content, size, users = {}, 2, None
                grow = len(orjson.dumps(room_id)) + 1 + _ROOM_VALUE + user
            if users is None:
                users = content[room_id] = {"m.read": {}}
            users["m.read"][user_id] = entry
            size += grow
        if content:
            contents.append(content)
    return contents
