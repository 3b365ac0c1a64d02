"""Drives sliding-sync connections against any `ReceiptsView` (the in-memory index or the
on-disk store), and the property every connection must hold, for the tests of both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from receipt_streams.core.sliding_sync import (
    INITIAL,
    Answer,
    Connections,
    Pos,
    RoomRequest,
    State,
    answer,
    resolve,
)
from receipt_streams.core.sync_view import SyncIndex
from tests.support.spec import validate_receipt_event

ME, A, B = "@me:hs1", "@a:hs1", "@b:hs2"
R1, R2, R3 = "!r1:hs1", "!r2:hs1", "!r3:hs2"
PARTITION = {R1: 0, R2: 1, R3: 0}


def key(room: str, user: str, rtype: str = "m.read", thread: str | None = None) -> ReceiptKey:
    return ReceiptKey(room, user, rtype, thread)


def val(event_id: str, ts: int = 1, thread: str | None = None) -> Receipt:
    return Receipt(event_id, 1, ts, client_data(ts, thread))


@dataclass
class Conn:
    """One client connection driven against a SyncIndex: requests carry the last pos; what
    was answered is applied to a client-side view as Element X keeps it."""

    index: Any = field(default_factory=lambda: SyncIndex(2, 1))
    connections: Connections = field(default_factory=Connections)
    pos: str | None = None
    view: dict[str, dict[tuple[str, str, str | None], str]] = field(default_factory=dict)
    next_offset: list[int] = field(default_factory=lambda: [0, 0])

    def write(self, k: ReceiptKey, v: Receipt) -> None:
        p = PARTITION[k.room_id]
        self.index.apply_receipt(p, self.next_offset[p], k, v)
        self.index.commit()
        self.next_offset[p] += 1

    def request(self, rooms: dict[str, RoomRequest], user: str = ME, keep: bool = True) -> Answer:
        state = resolve(self.connections, user, "main", self.pos)
        ans = answer(self.index, user, state, rooms)
        pos = Pos.new(ans.state.token).encode()  # type: ignore[arg-type]
        self.connections.put(user, "main", pos, ans.state)
        for event in ans.receipts.values():
            validate_receipt_event(event)
        if keep:  # else the response is lost on its way: the client retries its old pos
            self.pos = pos
            apply(self.view, ans.receipts)
        return ans


def apply(view: dict, receipts: dict[str, dict[str, Any]]) -> dict:
    for room_id, event in receipts.items():
        slots = view.setdefault(room_id, {})
        for event_id, by_type in event["content"].items():
            for rtype, by_user in by_type.items():
                for user, data in by_user.items():
                    slots[(user, rtype, data.get("thread_id"))] = event_id
    return view


def entries(event: dict[str, Any] | None) -> set[tuple[str, str, str, str | None]]:
    """(event, type, user, thread) of every entry of an m.receipt event."""
    if event is None:
        return set()
    return {
        (event_id, rtype, user, data.get("thread_id"))
        for event_id, by_type in event["content"].items()
        for rtype, by_user in by_type.items()
        for user, data in by_user.items()
    }


# --- the property: what a connection was sent equals the table it is owed ---

USERS = (ME, A, B)
ROOMS = (R1, R2, R3)
# Each event lives in one thread mode, so no user has an unthreaded and a threaded receipt on
# one event (MSC4102 is tested above): the client's view can then equal the table exactly.
EVENT_MODES: dict[str, str | None] = {"$u0": None, "$u1": None, "$m0": "main", "$t0": "$root"}
EVENTS = sorted(EVENT_MODES)

_receipt = st.tuples(
    st.just("receipt"),
    st.sampled_from(ROOMS),
    st.sampled_from(USERS),
    st.sampled_from(("m.read", "m.read", "m.read.private", "m.fully_read")),
    st.sampled_from(EVENTS),
)
_request = st.tuples(
    st.just("request"),
    st.dictionaries(
        st.sampled_from(ROOMS),
        st.tuples(st.booleans(), st.frozensets(st.sampled_from(EVENTS))),  # expanded, timeline
        max_size=3,
    ),
    st.sampled_from(("ok", "ok", "ok", "lost", "restart")),
)


OPS = st.lists(st.one_of(_receipt, _request), max_size=40)


def check_owed(ops: list[tuple], max_rooms: int, index: Any) -> None:
    """Applied in order, what a connection was sent equals, for every room of each answer,
    the table restricted to the keys it is owed: public receipts and the user's own private
    ones that were on the room's timeline or the user's own when the room was sent from
    scratch, or that changed after the room was first sent on the connection."""
    c = Conn(index=index, connections=Connections(max_rooms=max_rooms))
    table: dict[ReceiptKey, Receipt] = {}
    owed: dict[str, set[ReceiptKey]] = {}  # room -> keys the connection owes
    first_sent: dict[str, int] = {}  # room -> op number of its first send on the connection
    written_at: dict[ReceiptKey, int] = {}
    ts = 0
    for step, op in enumerate(ops):
        if op[0] == "receipt":
            _, room, user, rtype, event_id = op
            thread = None if rtype == "m.fully_read" else EVENT_MODES[event_id]
            ts += 1
            k, v = key(room, user, rtype, thread), val(event_id, ts, thread)
            c.write(k, v)
            table[k], written_at[k] = v, step
            continue
        _, wanted, fate = op
        if fate == "restart" or c.pos is None:
            c.pos, c.view, owed, first_sent = None, {}, {}, {}
        state = c.connections.get(ME, "main", c.pos)
        if state is None:  # reset (grew past max_rooms): the client starts a new connection
            c.pos, c.view, owed, first_sent = None, {}, {}, {}
            state = State()
        rooms = {
            r: RoomRequest(initial=expanded and state.token is not None, timeline=tuple(t))
            for r, (expanded, t) in wanted.items()
        }
        ans = c.request(rooms, keep=fate != "lost")
        if fate == "lost":
            continue
        for room, req in rooms.items():
            if ans.cases[room] == INITIAL:
                owed.setdefault(room, set()).update(
                    k
                    for k, v in table.items()
                    if k.room_id == room and (v.event_id in req.timeline or k.user_id == ME)
                )
            first_sent.setdefault(room, step)
            owed[room].update(
                k for k, at in written_at.items() if k.room_id == room and at > first_sent[room]
            )
            expected = {
                (k.user_id, k.receipt_type, k.thread_id): table[k].event_id
                for k in owed[room]
                if k.receipt_type == "m.read"
                or (k.receipt_type == "m.read.private" and k.user_id == ME)
            }
            assert c.view.get(room, {}) == expected
