"""The receipts extension of simplified sliding sync (MSC4186 + MSC3960), as Synapse decides it.

Per room of a response, one of three cases (../shared/notes-sliding-sync-receipts.md):

- **initial** (no connection position yet, the room never sent on this connection, or sent
  from scratch again, e.g. its timeline expanded): the receipts on the events of the room's
  timeline in this response, plus every receipt of the requesting user in the room. Not the
  room's whole receipt state: a big room has tens of thousands.
- **live** (sent before and up to date as of the connection's position): the changes since
  that position.
- **previously** (sent before, then out of the window while its receipts changed): the changes
  since the room's own position.

Then others' private receipts are dropped, `m.fully_read` is left to account data, and a user's
unthreaded receipt hides a threaded one on the same event (MSC4102). After a response, every
room in it is live at the new position; a live room left out of it whose receipts changed in
between becomes "previously", at the position the connection had before.

One addition to Synapse: a room sent from scratch again (timeline expanded) although this
connection has sent it before also gets the changes since its position (live or its own),
so a client never keeps a receipt that moved while the room was out of the window.

Connections are stateful: `Connections` keeps, per (user, connection id), the state of the
positions handed out, bounded in count and expiring; a position it does not know is
`UnknownPos` (`M_UNKNOWN_POS`), and so is one whose connection outgrew the room bound (it is
reset rather than made to forget rooms, which would silently lose changes). A position carries
the view's token, so a caller that keeps its own per-room state (a homeserver) can pass the
statuses itself and any API process answers it.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from receipt_streams.core.deltas import seen_by
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.sync_view import BadToken, Changes, ReceiptsView, Token

INITIAL, LIVE, PREVIOUSLY = "initial", "live", "previously"


class UnknownPos(ValueError):
    """A position this service does not know (any more): the client starts a new connection."""


@dataclass(frozen=True)
class Pos:
    """A connection position: the view's token it was answered at, and a nonce that tells
    apart two answers at the same token (their connection states may differ)."""

    nonce: str
    token: Token

    def encode(self) -> str:
        return f"{self.nonce}.{self.token.encode()}"

    @classmethod
    def decode(cls, raw: str) -> Pos:
        nonce, dot, token = raw.partition(".")
        if not dot or not nonce.isalnum() or len(nonce) > 32:
            raise UnknownPos(f"not a position: {raw[:100]!r}")
        try:
            return cls(nonce, Token.decode(token))
        except BadToken:
            raise UnknownPos(f"not a position: {raw[:100]!r}") from None

    @classmethod
    def new(cls, token: Token) -> Pos:
        return cls(secrets.token_hex(4), token)


@dataclass(frozen=True)
class Sent:
    """A room whose receipts this connection has sent: `live` (up to date as of the
    connection's position) or `previously` (up to date as of `since` only). Rooms are kept
    in the order last sent."""

    status: str
    since: Token | None = None
    timeline_limit: int | None = None  # the client form: a larger one sends the room afresh

    def __post_init__(self) -> None:
        if self.status not in (LIVE, PREVIOUSLY):
            raise ValueError(f"bad status {self.status!r}")
        if (self.status == PREVIOUSLY) != (self.since is not None):
            raise ValueError("a previously-sent room needs its position, a live one has none")


@dataclass(frozen=True)
class State:
    """A connection's state after a response: its position's token (None before the first
    response) and the rooms it has sent."""

    token: Token | None = None
    rooms: Mapping[str, Sent] = field(default_factory=dict)
    enabled: bool = False  # the client form: the extension is sticky per connection


@dataclass(frozen=True)
class RoomRequest:
    """One room of a response: sent from scratch (`initial`), its timeline's event IDs, and
    optionally its status as the caller's own connection state has it (overrides ours)."""

    initial: bool = False
    timeline: tuple[str, ...] = ()
    status: Sent | None = None
    timeline_limit: int | None = None
    own: Changes | None = None  # the user's own receipts in the room, when already read


@dataclass
class Answer:
    receipts: dict[str, dict[str, Any]]  # room -> one m.receipt event (rooms with none left out)
    cases: dict[str, str]  # room -> the case applied (initial, live, previously)
    demoted: dict[str, Token]  # live rooms left out that changed: now previously, since
    state: State


def receipt_event(
    room_id: str, user_id: str, changes: Iterable[tuple[ReceiptKey, Receipt]]
) -> dict[str, Any] | None:
    """One `m.receipt` event for `user_id`: everyone's public receipts and the user's own
    private ones (latest per key, MSC4102 applied); None when nothing is left."""
    content, _ = seen_by(room_id, user_id, changes)
    return {"type": "m.receipt", "content": content} if content else None


def answer(
    view: ReceiptsView,
    user_id: str,
    state: State,
    rooms: Mapping[str, RoomRequest],
    also_live: Iterable[str] = (),
) -> Answer:
    """The receipts extension for the rooms of one response, as of `view.token()`, and the
    connection's next state. `also_live`: rooms the caller's own state has live on the
    connection beside ours (to be demoted when they changed unsent)."""
    now = view.token()
    since = state.token
    if since is not None and not now.reached(since):
        raise ValueError("the view is behind the connection's position: wait first")
    receipts: dict[str, dict[str, Any]] = {}
    cases: dict[str, str] = {}
    for room_id, req in rooms.items():
        sent = req.status or state.rooms.get(room_id)
        changes: Changes = []
        if since is not None and sent is not None:  # what changed since it was last sent
            cases[room_id] = sent.status
            changes = view.room_changes_since(room_id, sent.since or since)
        if since is None or req.initial or sent is None:
            cases[room_id] = INITIAL
            on_timeline = view.receipts_on_events(room_id, req.timeline)
            own = req.own if req.own is not None else view.user_receipts(room_id, user_id)
            changes = on_timeline + own + changes
        event = receipt_event(room_id, user_id, changes)
        if event is not None:
            receipts[room_id] = event
    demoted: dict[str, Token] = {}
    if since is not None:
        live = {r for r, s in state.rooms.items() if s.status == LIVE} | set(also_live)
        for room_id in view.rooms_changed_since(live - set(rooms), since):
            demoted[room_id] = since
    next_rooms = dict(state.rooms)
    for room_id, from_token in demoted.items():
        next_rooms[room_id] = Sent(PREVIOUSLY, from_token, _limit(next_rooms.get(room_id)))
    for room_id, req in rooms.items():
        next_rooms.pop(room_id, None)  # re-inserted last: the least recently sent go first
        next_rooms[room_id] = Sent(LIVE, None, req.timeline_limit)
    return Answer(receipts, cases, demoted, State(now, next_rooms, state.enabled))


def _limit(sent: Sent | None) -> int | None:
    return sent.timeline_limit if sent is not None else None


# --- connections --------------------------------------------------------------------------


@dataclass
class _Connection:
    used: float
    states: dict[str, State]  # encoded pos -> state: the one last used, and those after it


class Connections:
    """Per (user, connection id), the states of the positions handed out: at most
    `max_connections` connections (the least recently used go first), each forgotten after
    `ttl_s` unused, each with at most `max_rooms` rooms (a larger state is not kept: the
    connection is reset), and at most `max_per_user` per user (a user's new connection beyond
    them forgets that user's least recently used one, never another user's). Using a position
    forgets every other one (as Synapse does): the client has moved on from the older ones,
    and never got the newer ones; the one it uses stays usable until it uses the next."""

    def __init__(
        self,
        max_connections: int = 10_000,
        ttl_s: float = 3600.0,
        max_rooms: int = 5_000,
        clock: Callable[[], float] = time.monotonic,
        max_per_user: int = 100,
    ) -> None:
        self.max_connections = max_connections
        self.ttl_s = ttl_s
        self.max_rooms = max_rooms
        self.max_per_user = max_per_user
        self.clock = clock
        self._conns: OrderedDict[tuple[str, str], _Connection] = OrderedDict()
        self._per_user: dict[str, int] = {}

    def _forget(self, key: tuple[str, str]) -> None:
        if self._conns.pop(key, None) is None:
            return
        left = self._per_user[key[0]] - 1
        if left:
            self._per_user[key[0]] = left
        else:
            del self._per_user[key[0]]

    def __len__(self) -> int:
        return len(self._conns)

    def _expire(self, now: float) -> None:
        while self._conns:
            key, conn = next(iter(self._conns.items()))
            if now - conn.used <= self.ttl_s and len(self._conns) <= self.max_connections:
                break
            self._forget(key)

    def get(self, user_id: str, conn_id: str, pos: str | None) -> State | None:
        """The state a position was handed out with, or None when unknown; a first request
        (`pos` None) starts the connection afresh."""
        now = self.clock()
        self._expire(now)
        key = (user_id, conn_id)
        if pos is None:
            self._forget(key)
            return State()
        conn = self._conns.get(key)
        if conn is None or pos not in conn.states:
            return None
        state = conn.states[pos]
        conn.states = {pos: state}
        conn.used = now
        self._conns.move_to_end(key)
        return state

    def put(self, user_id: str, conn_id: str, pos: str, state: State) -> bool:
        """Remember `state` under `pos`; False (and the connection reset) when it holds more
        rooms than allowed."""
        now = self.clock()
        key = (user_id, conn_id)
        if len(state.rooms) > self.max_rooms:
            self._forget(key)
            return False
        conn = self._conns.get(key)
        if conn is None:
            if self._per_user.get(user_id, 0) >= self.max_per_user:
                # One user's many connection ids must not push everyone else's out.
                self._forget(next(k for k in self._conns if k[0] == user_id))
            conn = self._conns[key] = _Connection(now, {})
            self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        conn.used = now
        self._conns.move_to_end(key)
        conn.states[pos] = state
        self._expire(now)
        return True


def resolve(
    connections: Connections,
    user_id: str,
    conn_id: str,
    pos: str | None,
    caller_keeps_state: bool = False,
) -> State:
    """The state a request starts from: ours for its position; without ours (another
    process handed it out, or it expired), the position's token alone when the caller keeps
    the per-room state itself; else `UnknownPos`."""
    decoded = Pos.decode(pos) if pos is not None else None
    state = connections.get(user_id, conn_id, pos)
    if state is not None:
        return state
    assert decoded is not None
    if caller_keeps_state:
        return State(decoded.token, {})
    raise UnknownPos("unknown position")
