"""The fold of all inputs of one partition, over plain key-value stores.

`Processor` holds the Matrix rules' orchestration: decode, check, hold or fold, release. It
reads and writes three stores (receipts, room state, held receipts), the worker's state
stores (or Faust tables) and dicts in tests, and returns the side effects for the caller to
carry out: DLQ records to send, and held-store writes that must wait until everything sent
before them is durable (a held receipt is only forgotten once its outcome is safely in Kafka).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from receipt_streams.core.dlq import (
    DlqBounds,
    Source,
    dlq_record,
    edu_dlq_records,
    routing_shares,
)
from receipt_streams.core.federation import (
    FEDERATED_TYPE,
    EduShare,
    RemoteReceipt,
    outbox_record,
    split_edu,
)
from receipt_streams.core.feeds import (
    FeedOptions,
    PositionKey,
    ReceiptSource,
    history_value,
    in_history,
    merged_partner,
    position_move,
    position_value,
)
from receipt_streams.core.fold import Outcome, fold
from receipt_streams.core.ids import server_of
from receipt_streams.core.membership import apply_membership
from receipt_streams.core.models import (
    AdminCommand,
    ClientReceipt,
    FederationReceipts,
    MembershipChange,
    RoomEvent,
)
from receipt_streams.core.parsing import Rejection, check_key, parse_payload
from receipt_streams.core.reasons import Reason
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.state import HeldTable, ReceiptsTable, RoomState, Store
from receipt_streams.core.threads import EventInfo
from receipt_streams.core.validation import Accept, WaitFor, check_client_receipt, expiry_reason


class SendDlq(NamedTuple):
    topic: str  # the source topic: the DLQ record's key
    record: bytes
    reason: Reason


class Folded(NamedTuple):
    key: ReceiptKey
    receipt: Receipt
    outcome: Outcome


class Emit(NamedTuple):
    """A record for a stream: `federation_in` (one inbound EDU entry, repartitioned to its
    room) or `federation_out` (a local m.read change to federate), keyed by room; or one of
    the feeds, `read_positions` (a None value is a tombstone) and `history`, keyed by slot and
    sent to the partition of the room's input records."""

    stream: str
    key: bytes
    value: bytes | None


RecordId = tuple[str, int, int]  # topic, partition, offset of a held record


class ForgetHeld(NamedTuple):
    """Forget these held records once everything sent before is durable (after a producer
    flush). Only the named records: others may have joined the same list meanwhile."""

    key: bytes
    partition: int
    records: frozenset[RecordId]


class PutOnHold(NamedTuple):
    """A receipt was put on hold (in the held table) until its event or its sender's join
    is seen: `waiting_for` is "event" or "join"."""

    waiting_for: str


class Removed(NamedTuple):
    """What an admin command removed on one partition: table slots (each a tombstone on the
    receipts changelog), room-state keys and held receipts; `keys` are the slots, for the
    outputs keyed by them (a feed that must forget them too)."""

    command: str
    target: str  # the room or the user
    receipts: int
    state: int
    held: int
    keys: tuple[ReceiptKey, ...] = ()

    def summary(self) -> dict[str, Any]:
        """For the log line: the counts, not the keys."""
        return {f: getattr(self, f) for f in self._fields if f != "keys"}


class OverDlqBudget(NamedTuple):
    """A rejected inbound entry counted but not written to the DLQ: its EDU's DLQ records
    would pass twice the EDU's bytes (a forged EDU must not multiply into the DLQ)."""

    reason: Reason


Effect = SendDlq | Folded | ForgetHeld | PutOnHold | Emit | Removed | OverDlqBudget

FEDERATION_IN, FEDERATION_OUT = "federation_in", "federation_out"
READ_POSITIONS, HISTORY = "read_positions", "history"
FEEDS = frozenset({READ_POSITIONS, HISTORY})  # room-partitioned like the changelogs


@dataclass(frozen=True, slots=True)
class Limits:
    server_name: str = "localhost"  # users on it are local; their m.read is federated
    grace_ms: int = 30_000
    max_record_bytes: int = 65_536
    held_per_dep: int = 1_000
    held_key_bytes: int = 262_144  # one held list (its changelog value), encoded
    held_partition_bytes: int = 16 * 1024 * 1024  # all held lists of one partition
    dlq: DlqBounds = DlqBounds()  # noqa: RUF009 (frozen)
    dlq_per_edu: int = 100  # DLQ records for the rejected parts of one EDU, then a summary
    feeds: FeedOptions = FeedOptions()  # noqa: RUF009 (a NamedTuple)


def _entry(src: Source, held_at: int) -> dict[str, Any]:
    return {
        "topic": src.topic,
        "partition": src.partition,
        "offset": src.offset,
        "key": src.key.decode("utf-8", "replace") if src.key is not None else None,
        "value": (src.value or b"").decode("utf-8"),
        "held_at": held_at,
    }


def _source(entry: dict[str, Any]) -> Source:
    key = entry["key"].encode() if entry["key"] is not None else None
    return Source(entry["topic"], entry["partition"], entry["offset"], key, entry["value"].encode())


def record_id(entry: dict[str, Any]) -> RecordId:
    return entry["topic"], entry["partition"], entry["offset"]


class Processor:
    def __init__(
        self,
        receipts: Store,
        state: Store,
        held: Store,
        limits: Limits,
        room_partition: Callable[[str], int] | None = None,
    ) -> None:
        self.receipts = ReceiptsTable(receipts)
        self.state = RoomState(state)
        self.held = HeldTable(held)
        self.limits = limits
        # Where one store serves several partitions (Faust tables), the partition a room's
        # records go to: an erasure must touch only the rooms of the partition it runs on
        # (their tombstones go to that changelog partition). None: one store, one partition.
        self.room_partition = room_partition

    def reject(self, src: Source, rejection: Rejection, now_ms: int) -> SendDlq:
        return SendDlq(
            src.topic, dlq_record(src, rejection, now_ms, self.limits.dlq), rejection.reason
        )

    def _parse(self, model: type, src: Source, now_ms: int) -> Any:
        parsed = parse_payload(model, src.value, self.limits.max_record_bytes)
        if isinstance(parsed, Rejection):
            return self.reject(src, parsed, now_ms)
        if (bad := check_key(src.key, parsed.room_id)) is not None:
            return self.reject(src, bad, now_ms)
        return parsed

    # --- inputs ------------------------------------------------------------------------

    def client_receipt(self, src: Source, now_ms: int) -> list[Effect]:
        parsed = self._parse(ClientReceipt, src, now_ms)
        if isinstance(parsed, SendDlq):
            return [parsed]
        return self._try_client(parsed, src, now_ms, now_ms, expire=False)

    def membership(self, src: Source, now_ms: int) -> list[Effect]:
        change = self._parse(MembershipChange, src, now_ms)
        if isinstance(change, SendDlq):
            return [change]
        room, user = change.room_id, change.user_id
        writes = apply_membership(change, self.state.member(room, user), self.state.servers(room))
        if writes.servers is not None:
            self.state.put_servers(room, writes.servers)
        if writes.member is not None:
            self.state.put_member(room, user, writes.member)
        member = self.state.member(room, user)
        if member is not None and (member.joined or member.gone):
            return self._release(HeldTable.key(room, "join", user), now_ms)
        return []

    def room_event(self, src: Source, now_ms: int) -> list[Effect]:
        ev = self._parse(RoomEvent, src, now_ms)
        if isinstance(ev, SendDlq):
            return [ev]
        if self.state.event(ev.room_id, ev.event_id) is None:
            rel = ev.relates_to
            self.state.put_event(
                ev.room_id,
                ev.event_id,
                EventInfo(
                    ev.stream_pos,
                    ev.sender,
                    rel.rel_type if rel else None,
                    rel.event_id if rel else None,
                    ev.origin_server_ts,
                ),
            )
        # Release even when the event was known: a crash may have cut a release short.
        return self._release(HeldTable.key(ev.room_id, "event", ev.event_id), now_ms)

    def federation_edu(self, src: Source, now_ms: int) -> list[Effect]:
        """Split an inbound EDU (keyed by origin) into entries keyed by room; stateless."""
        envelope = parse_payload(FederationReceipts, src.value, self.limits.max_record_bytes)
        if isinstance(envelope, Rejection):
            return [self.reject(src, envelope, now_ms)]
        if envelope.origin == self.limits.server_name:
            return [
                self.reject(
                    src,
                    Rejection(
                        Reason.ORIGIN_MISMATCH, "an inbound EDU cannot come from this server"
                    ),
                    now_ms,
                )
            ]
        accepted, rejected = split_edu(envelope.origin, envelope.edu.content)
        records = edu_dlq_records(
            src,
            envelope.origin,
            envelope.received_ts,
            rejected,
            now_ms,
            self.limits.dlq,
            self.limits.dlq_per_edu,
        )
        effects: list[Effect] = [SendDlq(src.topic, record, why) for record, why in records]
        raw = src.value or b""
        share = EduShare(hashlib.sha256(raw).hexdigest(), len(raw), 0)
        entries = [r._replace(edu=share) for r in accepted]
        shares = routing_shares(
            len(raw),
            sum(len(src.topic.encode()) + len(record) for record, _ in records),
            [len(r.encode()) for r in entries],
            max(0, self.limits.dlq_per_edu - len(records)),
        )
        for r, dlq_bytes in zip(entries, shares, strict=True):
            entry = r._replace(edu=share._replace(dlq_bytes=dlq_bytes))
            effects.append(Emit(FEDERATION_IN, r.room_id.encode(), entry.encode()))
        return effects

    def remote_receipt(self, src: Source, now_ms: int) -> list[Effect]:
        """One inbound entry on its room's partition: the origin must be in the room; the
        event may be unknown yet (remote events can arrive later)."""
        remote = RemoteReceipt.parse(src.value)
        if isinstance(remote, Rejection):
            return [self.reject(src, remote, now_ms)]
        servers = self.state.servers(remote.room_id)
        if servers is None or not servers.has(remote.origin):
            why = Rejection(
                Reason.ORIGIN_NOT_IN_ROOM,
                f"{remote.origin} has no joined member in {remote.room_id}",
            )
            return [self._reject_routed(src, remote, why, now_ms)]
        event = self.state.event(remote.room_id, remote.event_id)
        receipt = remote.receipt(event.stream_pos if event else None)
        return self._fold(remote.key, receipt, "federation")

    def _reject_routed(
        self, src: Source, remote: RemoteReceipt, why: Rejection, now_ms: int
    ) -> SendDlq | OverDlqBudget:
        """A DLQ record of one routed entry with its EDU's hash, within the entry's share of
        its EDU's DLQ budget; else only counted. An entry that names no EDU (written to the
        internal topic by something else) gets a record of its own."""
        edu = remote.edu
        if edu is None:
            return self.reject(src, why, now_ms)
        path = [remote.room_id, FEDERATED_TYPE, remote.user_id]
        meta = {"origin": remote.origin, "sha256": edu.sha256, "size": edu.size}
        record = dlq_record(
            src, why, now_ms, self.limits.dlq, edu={**meta, "path": path, "entries": 1}
        )
        if len(src.topic.encode()) + len(record) > edu.dlq_bytes:
            return OverDlqBudget(why.reason)
        return SendDlq(src.topic, record, why.reason)

    def admin(self, src: Source, now_ms: int) -> list[Effect]:
        """An operator's command: `purge_room` (keyed by the room) or `erase_user` (keyed by
        the user; it concerns every room, so one copy is written to every partition and each
        copy clears that partition's rooms). Removals are table deletes, which the engines
        write as tombstones on the changelogs."""
        cmd = parse_payload(AdminCommand, src.value, self.limits.max_record_bytes)
        if isinstance(cmd, Rejection):
            return [self.reject(src, cmd, now_ms)]
        target = cmd.room_id if cmd.command == "purge_room" else cmd.user_id
        other = cmd.user_id if cmd.command == "purge_room" else cmd.room_id
        if target is None or other is not None:
            field = "room_id" if cmd.command == "purge_room" else "user_id"
            why = f"{cmd.command} takes {field} alone"
            return [self.reject(src, Rejection(Reason.BAD_SHAPE, why), now_ms)]
        if src.key is None or src.key != target.encode():
            shown = src.key.decode("utf-8", "replace") if src.key is not None else None
            why = f"record key {shown!r} is not the command's target {target!r}"
            return [self.reject(src, Rejection(Reason.KEY_MISMATCH, why), now_ms)]
        if cmd.command == "purge_room":
            if self.room_partition is not None and self.room_partition(target) != src.partition:
                why = f"{target} belongs to partition {self.room_partition(target)}"
                return [self.reject(src, Rejection(Reason.KEY_MISMATCH, why), now_ms)]
            removed = self._purge_room(target)
        else:
            removed = self._erase_user(target, src.partition)
        return [removed, *self._forget_positions(removed.keys)]

    def _forget_positions(self, slots: tuple[ReceiptKey, ...]) -> list[Effect]:
        """Read-position tombstones for removed slots, so the compacted feed forgets them."""
        if not self.limits.feeds.read_positions:
            return []
        positions = {
            PositionKey.of(key)
            for key in slots
            if merged_partner(key) is not None and self._local(key.user_id)
        }
        return [self.read_position(key, None) for key in sorted(positions, key=PositionKey.encode)]

    def _purge_room(self, room_id: str) -> Removed:
        slots = self.receipts.room_keys(room_id)
        for raw in slots:
            self.receipts.delete(raw)
        state = self.state.room_keys(room_id)
        for raw in state:
            del self.state.store[raw]
        held = 0
        for key in self.held.room_keys(room_id):
            entries = self.held.get(key)
            held += len(entries)
            self.held.remove(key, frozenset(map(record_id, entries)))
        keys = tuple(map(ReceiptKey.decode, slots))
        return Removed("purge_room", room_id, len(slots), len(state), held, keys)

    def _erase_user(self, user_id: str, partition: int) -> Removed:
        def here(room_id: str) -> bool:
            return self.room_partition is None or self.room_partition(room_id) == partition

        slots = [raw for raw in self.receipts.user_keys(user_id) if here(orjson.loads(raw)[0])]
        for raw in slots:
            self.receipts.delete(raw)
        held = 0
        for key, entries in list(self.held.items()):
            theirs = [
                e
                for e in entries
                if e["partition"] == partition
                and orjson.loads(e["value"]).get("user_id") == user_id
            ]
            if theirs:
                held += len(theirs)
                self.held.remove(key, frozenset(map(record_id, theirs)))
        return Removed(
            "erase_user", user_id, len(slots), 0, held, tuple(map(ReceiptKey.decode, slots))
        )

    def tick(self, partition: int, now_ms: int) -> list[Effect]:
        """The grace-period sweep for one partition: expired held receipts get a last check."""
        effects: list[Effect] = []
        for key, entries in self.held.items(partition):
            due = [
                e
                for e in entries
                if e["partition"] == partition and now_ms - e["held_at"] >= self.limits.grace_ms
            ]
            if not due:
                continue
            for entry in due:
                receipt = ClientReceipt.model_validate_json(entry["value"])
                effects += self._try_client(
                    receipt, _source(entry), entry["held_at"], now_ms, expire=True
                )
            effects.append(ForgetHeld(key, partition, frozenset(map(record_id, due))))
        return effects

    # --- rules -------------------------------------------------------------------------

    def _try_client(
        self, r: ClientReceipt, src: Source, held_at: int, now_ms: int, *, expire: bool
    ) -> list[Effect]:
        """Fold, hold or refuse one client receipt; `src` is its input record, `held_at` when
        it was first held (now, for a new record)."""
        verdict = check_client_receipt(
            r,
            self.state.member(r.room_id, r.user_id),
            lambda event_id: self.state.event(r.room_id, event_id),
        )
        if isinstance(verdict, Rejection):
            return [self.reject(src, verdict, now_ms)]
        if isinstance(verdict, WaitFor):
            if expire:
                why = f"{verdict.dep} not seen within {self.limits.grace_ms} ms"
                expired = Rejection(expiry_reason(verdict.waiting_for), why)
                return [self.reject(src, expired, now_ms)]
            return self._hold(r.room_id, verdict, src, held_at, now_ms)
        assert isinstance(verdict, Accept)
        return self._fold(verdict.key, verdict.receipt, "client")

    def _stored(self, key: ReceiptKey) -> Receipt | None:
        """The slot's receipt, with the position of its event if that became known since it
        was stored (a remote receipt for an unknown event): else older receipts would win."""
        current = self.receipts.get(key)
        if current is not None and current.stream_pos is None:
            event = self.state.event(key.room_id, current.event_id)
            if event is not None:
                current = current._replace(stream_pos=event.stream_pos)
        return current

    def _fold(self, key: ReceiptKey, incoming: Receipt, source: ReceiptSource) -> list[Effect]:
        previous = self._stored(key)
        outcome = fold(previous, incoming)
        effects: list[Effect] = [Folded(key, incoming, outcome)]
        if outcome is Outcome.APPLIED:
            self.receipts.put(key, incoming)
            # Accepted changes only: a duplicate or a replay (REPLAYED) adds nothing.
            effects += self._feeds(key, previous, incoming, source)
        if outcome is not Outcome.UNCHANGED and self._federates(key):
            # REPLAYED too: the table write may have survived a crash that lost this record.
            servers = self.state.servers(key.room_id)
            destinations = servers.servers() - {self.limits.server_name} if servers else set()
            if destinations:
                effects.append(
                    Emit(
                        FEDERATION_OUT,
                        key.room_id.encode(),
                        outbox_record(key, incoming, destinations),
                    )
                )
        return effects

    def _feeds(
        self, key: ReceiptKey, previous: Receipt | None, incoming: Receipt, source: ReceiptSource
    ) -> list[Effect]:
        """The feed records of one accepted change of `key` from `previous` to `incoming`."""
        options = self.limits.feeds
        effects: list[Effect] = []
        if options.history and in_history(key.receipt_type, options):
            event = self.state.event(key.room_id, incoming.event_id)
            sent = event.origin_server_ts if event is not None else None
            value = history_value(key, previous, incoming, sent, source)
            effects.append(Emit(HISTORY, key.encode(), value))
        partner = merged_partner(key)
        if options.read_positions and partner is not None and self._local(key.user_id):
            moved = position_move(previous, incoming, self._stored(partner))
            if moved is not None:
                effects.append(self.read_position(PositionKey.of(key), moved))
        return effects

    def read_position(self, key: PositionKey, position: Receipt | None) -> Emit:
        """The one place a read-position record is made: where `key`'s user has read up to,
        or a tombstone (None: the slot was purged or erased)."""
        value = position_value(key, position) if position is not None else None
        return Emit(READ_POSITIONS, key.encode(), value)

    def _local(self, user_id: str) -> bool:
        return server_of(user_id) == self.limits.server_name

    def _federates(self, key: ReceiptKey) -> bool:
        """Only local users' m.read: never m.read.private, never m.fully_read, never a
        remote user's receipt (that would federate it again)."""
        return key.receipt_type == "m.read" and self._local(key.user_id)

    def _hold(
        self, room_id: str, hold: WaitFor, src: Source, held_at: int, now_ms: int
    ) -> list[Effect]:
        key = HeldTable.key(room_id, hold.waiting_for, hold.dep)
        entries = self.held.get(key)
        this = (src.topic, src.partition, src.offset)
        if any(record_id(e) == this for e in entries):
            return [PutOnHold(hold.waiting_for)]  # already held before a crash
        limits = self.limits
        if len(entries) >= limits.held_per_dep:
            why = f"more than {limits.held_per_dep} receipts wait for {hold.dep}"
            return [self.reject(src, Rejection(Reason.HELD_OVERFLOW, why), now_ms)]
        entries.append(_entry(src, held_at))
        raw = HeldTable.encode(entries)
        if len(raw) > limits.held_key_bytes:
            why = f"receipts waiting for {hold.dep} would take over {limits.held_key_bytes} bytes"
            return [self.reject(src, Rejection(Reason.HELD_OVERFLOW, why), now_ms)]
        total = self.held.partition_bytes(src.partition) + len(raw) - self.held.size(key)
        if total > limits.held_partition_bytes:
            why = (
                f"receipts held on partition {src.partition} would take over "
                f"{limits.held_partition_bytes} bytes"
            )
            return [self.reject(src, Rejection(Reason.HELD_OVERFLOW, why), now_ms)]
        self.held.put_raw(key, raw, src.partition)
        return [PutOnHold(hold.waiting_for)]

    def _release(self, key: bytes, now_ms: int) -> list[Effect]:
        entries = self.held.get(key)
        if not entries:
            return []
        effects: list[Effect] = []
        for entry in entries:
            receipt = ClientReceipt.model_validate_json(entry["value"])
            effects += self._try_client(
                receipt, _source(entry), entry["held_at"], now_ms, expire=False
            )
        effects.append(ForgetHeld(key, entries[0]["partition"], frozenset(map(record_id, entries))))
        return effects
