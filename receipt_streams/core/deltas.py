"""Per-room sync deltas (CONTRACT §3, §4.3-5) and the view a consumer rebuilds from them.

A delta carries, for each changed slot, only its latest state; within one delta a user's
unthreaded receipt hides a threaded one on the same event (MSC4102). Applying deltas in order
is idempotent, so redelivery after a fault is harmless.

A slot removed from the table (a room purge or a user erasure: a tombstone on the changelog)
is carried as a removal, so that a consumer's view follows the table: `removed` lists the
public `m.read` slots gone (for every member, as the receipts were), `removed_private` each
owner's own `m.read.private` and `m.fully_read` slots gone (for that owner only). A /sync v3
client cannot un-see a receipt: the homeserver shows removals to nobody, it only stops
showing the receipts (README, Purge and erasure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from receipt_streams.core.receipts import Receipt, ReceiptKey

PUBLIC, PRIVATE, FULLY_READ = "m.read", "m.read.private", "m.fully_read"

# A consumer's view of one room: (user, receipt type, thread or None) -> (event_id, data).
View = dict[tuple[str, str, str | None], tuple[str, Mapping[str, Any]]]


def _latest(
    changes: Iterable[tuple[ReceiptKey, Receipt | None]],
) -> dict[ReceiptKey, Receipt | None]:
    latest: dict[ReceiptKey, Receipt | None] = {}
    for key, value in changes:
        latest.pop(key, None)  # keep arrival order of the newest write
        latest[key] = value
    return latest


def _place(content: dict, threads: dict, key: ReceiptKey, value: Receipt) -> None:
    """Put one slot's receipt in `content`; `threads` remembers each placed entry's thread
    (from the key, which is authoritative) to settle clashes."""
    users = content.setdefault(value.event_id, {}).setdefault(key.receipt_type, {})
    spot = (value.event_id, key.receipt_type, key.user_id)
    if spot in threads and threads[spot] is None and key.thread_id is not None:
        return  # MSC4102: unthreaded wins on a clash
    threads[spot] = key.thread_id
    users[key.user_id] = dict(value.data)


def seen_by(
    room_id: str, user_id: str, changes: Iterable[tuple[ReceiptKey, Receipt | None]]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What `user_id` sees of a room's changes (oldest first), as a client is shown them:
    one `m.receipt` content with everyone's public receipts and the user's own private ones
    (latest per slot, MSC4102 applied), and the user's `m.fully_read` account data event (or
    None). Removals show to nobody. The same as `build_delta` then keeping the user's parts,
    in one pass: `/sync` and sliding sync render every answer with it."""
    latest = _latest((k, v) for k, v in changes if k.receipt_type == PUBLIC or k.user_id == user_id)
    content: dict[str, Any] = {}
    threads: dict[tuple[str, str, str], str | None] = {}
    fully_read = None
    for key, value in latest.items():
        if key.room_id != room_id:
            raise ValueError(f"change for {key.room_id} in an answer for {room_id}")
        if value is None:
            continue
        if key.receipt_type == FULLY_READ:
            fully_read = {"type": FULLY_READ, "content": {"event_id": value.event_id}}
        elif key.receipt_type in (PUBLIC, PRIVATE):
            _place(content, threads, key, value)
    return content, fully_read


def build_delta(
    room_id: str, seq: int, ts: int, changes: Iterable[tuple[ReceiptKey, Receipt | None]]
) -> dict[str, Any] | None:
    """One delta for a room's changes (oldest first; None: the slot was removed), or None
    when nothing is left."""
    public: dict = {}
    private: dict[str, dict] = {}
    account: dict[str, dict] = {}
    removed: list[dict[str, Any]] = []
    removed_private: dict[str, list[dict[str, Any]]] = {}
    threads: dict[tuple[str, str, str], str | None] = {}
    for key, value in _latest(changes).items():
        if key.room_id != room_id:
            raise ValueError(f"change for {key.room_id} in a delta for {room_id}")
        if value is None:
            slot = {"receipt_type": key.receipt_type, "thread_id": key.thread_id}
            if key.receipt_type == PUBLIC:
                removed.append({"user_id": key.user_id, **slot})
            else:
                removed_private.setdefault(key.user_id, []).append(slot)
        elif key.receipt_type == PUBLIC:
            _place(public, threads, key, value)
        elif key.receipt_type == PRIVATE:
            _place(private.setdefault(key.user_id, {}), threads, key, value)
        elif key.receipt_type == FULLY_READ:
            account[key.user_id] = {"type": FULLY_READ, "content": {"event_id": value.event_id}}
    if not (public or private or account or removed or removed_private):
        return None
    delta: dict[str, Any] = {"room_id": room_id, "seq": seq, "ts": ts}
    if public:
        delta["receipt"] = {"type": "m.receipt", "content": public}
    if private:
        delta["private"] = {u: {"type": "m.receipt", "content": c} for u, c in private.items()}
    if account:
        delta["account_data"] = account
    if removed:
        delta["removed"] = removed
    if removed_private:
        delta["removed_private"] = removed_private
    return delta


def _apply_content(view: View, content: Mapping[str, Any]) -> None:
    for event_id, by_type in content.items():
        for receipt_type, by_user in by_type.items():
            for user_id, data in by_user.items():
                view[(user_id, receipt_type, data.get("thread_id"))] = (event_id, data)


def apply_delta(view: View, delta: Mapping[str, Any]) -> View:
    """Fold one delta into a consumer's view; applying the same delta twice changes nothing."""
    if "receipt" in delta:
        _apply_content(view, delta["receipt"]["content"])
    for event in (delta.get("private") or {}).values():
        _apply_content(view, event["content"])
    for user_id, event in (delta.get("account_data") or {}).items():
        view[(user_id, FULLY_READ, None)] = (event["content"]["event_id"], {})
    for slot in delta.get("removed") or ():
        view.pop((slot["user_id"], slot["receipt_type"], slot["thread_id"]), None)
    for user_id, slots in (delta.get("removed_private") or {}).items():
        for slot in slots:
            view.pop((user_id, slot["receipt_type"], slot["thread_id"]), None)
    return view


def table_view(entries: Iterable[tuple[ReceiptKey, Receipt]]) -> View:
    """The view of a table's current entries: what one delta of all of them would give."""
    entries = list(entries)
    rooms = {k.room_id for k, _ in entries}
    if len(rooms) > 1:
        raise ValueError("table_view takes one room's entries")
    view: View = {}
    if rooms:
        delta = build_delta(rooms.pop(), 0, 0, entries)
        if delta is not None:
            apply_delta(view, delta)
    return view


MAX_DELTA_BYTES = 262_144  # a delta stays far under the broker's 1 MB record limit
_ENTRY_OVERHEAD = 64  # a change's bytes in a delta, beyond its changelog key and value


def plan_deltas(
    records: Iterable[tuple[int, bytes, bytes | None]], now_ms: int
) -> list[dict[str, Any]]:
    """Deltas for a batch of receipts-changelog records `(offset, key, value)` of one
    partition, oldest first: one delta per room, `seq` being the offset of the room's newest
    record (offsets only grow within a partition, and a room lives on one partition). A room
    whose changes would make a delta over `MAX_DELTA_BYTES` gets several, cut in offset order
    as if the batch had been cut there, each with the offset of its newest change."""
    by_room: dict[str, list[list[tuple[ReceiptKey, Receipt | None]]]] = {}
    seqs: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for offset, raw_key, raw_value in records:
        key = ReceiptKey.decode(raw_key)  # a null value: a tombstone, a removal
        size = len(raw_key) + len(raw_value or b"") + _ENTRY_OVERHEAD
        chunks = by_room.setdefault(key.room_id, [[]])
        if chunks[-1] and sizes[key.room_id] + size > MAX_DELTA_BYTES:
            chunks.append([])
            sizes[key.room_id] = 0
        chunks[-1].append((key, Receipt.decode(raw_value) if raw_value is not None else None))
        sizes[key.room_id] = sizes.get(key.room_id, 0) + size
        room_seqs = seqs.setdefault(key.room_id, [])
        if len(room_seqs) < len(chunks):
            room_seqs.append(offset)
        room_seqs[-1] = max(offset, room_seqs[-1])
    out = []
    for room_id, chunks in by_room.items():
        for chunk, seq in zip(chunks, seqs[room_id], strict=True):
            delta = build_delta(room_id, seq, now_ms, chunk)
            if delta is not None:
                out.append(delta)
    return out
