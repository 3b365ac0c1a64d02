"""The sliding-sync receipts extension (MSC4186 + MSC3960), case by case against
../shared/notes-sliding-sync-receipts.md, then as a property over any receipts and requests.

Every m.receipt event answered is checked against the spec's `m.receipt` schema.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receipt_streams.core.sliding_sync import (
    INITIAL,
    LIVE,
    PREVIOUSLY,
    Connections,
    Pos,
    RoomRequest,
    Sent,
    State,
    UnknownPos,
    answer,
    receipt_event,
    resolve,
)
from receipt_streams.core.sync_view import SyncIndex, Token
from tests.support.sliding import ME, OPS, R1, R2, R3, A, B, Conn, check_owed, entries, key, val
from tests.support.spec import validate_receipt_event


def timeline(*events: str) -> RoomRequest:
    return RoomRequest(timeline=events)


# --- initial -----------------------------------------------------------------------------------


def test_initial_room_gets_receipts_on_its_timeline_and_all_of_the_users_own() -> None:
    c = Conn()
    c.write(key(R1, A), val("$old"))  # not on the timeline: left out
    c.write(key(R1, B), val("$t1"))
    c.write(key(R1, A, thread="main"), val("$t2", 2, "main"))
    c.write(key(R1, ME), val("$older"))  # the user's own: always, wherever it points
    c.write(key(R1, ME, "m.read.private"), val("$oldest"))
    c.write(key(R1, ME, thread="$root"), val("$thr", 3, "$root"))
    c.write(key(R1, A, "m.read.private"), val("$t1"))  # someone else's private: never
    c.write(key(R1, ME, "m.fully_read"), val("$t1"))  # account data, not a receipt
    ans = c.request({R1: timeline("$t1", "$t2")})
    assert ans.cases == {R1: INITIAL}
    assert entries(ans.receipts[R1]) == {
        ("$t1", "m.read", B, None),
        ("$t2", "m.read", A, "main"),
        ("$older", "m.read", ME, None),
        ("$oldest", "m.read.private", ME, None),
        ("$thr", "m.read", ME, "$root"),
    }


def test_initial_room_without_timeline_or_own_receipts_is_left_out() -> None:
    c = Conn()
    c.write(key(R1, A), val("$old"))
    ans = c.request({R1: timeline(), R2: timeline("$x")})
    assert ans.receipts == {}
    assert ans.cases == {R1: INITIAL, R2: INITIAL}
    assert set(ans.state.rooms) == {R1, R2}  # sent (empty), live from here on


def test_reverse_index_follows_a_key_that_moves() -> None:
    c = Conn()
    c.write(key(R1, A), val("$t1"))
    c.write(key(R1, A), val("$t2"))
    assert entries(c.request({R1: timeline("$t1")}).receipts.get(R1)) == set()
    c2 = Conn(index=c.index)
    assert entries(c2.request({R1: timeline("$t2")}).receipts[R1]) == {("$t2", "m.read", A, None)}


# --- live ----------------------------------------------------------------------------------------


def test_live_room_gets_the_changes_since_the_connection_position() -> None:
    c = Conn()
    c.write(key(R1, A), val("$t1"))
    c.request({R1: timeline("$t1")})
    c.write(key(R1, B), val("$t5"))  # on no timeline: live changes are every change
    c.write(key(R1, A), val("$t6"))
    c.write(key(R1, A), val("$t7"))  # latest per key, not history
    ans = c.request({R1: RoomRequest()})
    assert ans.cases == {R1: LIVE}
    assert entries(ans.receipts[R1]) == {("$t5", "m.read", B, None), ("$t7", "m.read", A, None)}
    assert c.request({R1: RoomRequest()}).receipts == {}  # nothing new


def test_rooms_of_one_response_each_get_their_own_case() -> None:
    c = Conn()
    c.write(key(R1, A), val("$a"))
    c.request({R1: timeline("$a")})
    c.write(key(R1, A), val("$b"))
    c.write(key(R2, B), val("$c"))
    ans = c.request({R1: RoomRequest(), R2: timeline("$c")})
    assert ans.cases == {R1: LIVE, R2: INITIAL}
    assert entries(ans.receipts[R1]) == {("$b", "m.read", A, None)}
    assert entries(ans.receipts[R2]) == {("$c", "m.read", B, None)}


# --- out of the window and back ----------------------------------------------------------------


def test_room_that_left_the_window_gets_the_changes_since_its_own_position() -> None:
    c = Conn()
    c.write(key(R1, A), val("$a1"))
    c.request({R1: timeline("$a1"), R2: timeline()})
    c.write(key(R1, A), val("$a2"))  # R1 out of the window from here
    c.write(key(R2, B), val("$b1"))
    ans = c.request({R2: RoomRequest()})
    assert ans.demoted == {R1: ans.state.rooms[R1].since}
    assert ans.state.rooms[R1].status == PREVIOUSLY
    c.write(key(R1, B), val("$a3"))
    c.request({R2: RoomRequest()})  # still out: stays previously at its own position
    assert c.connections.get(ME, "main", c.pos).rooms[R1].status == PREVIOUSLY  # type: ignore[union-attr]
    back = c.request({R1: RoomRequest(), R2: RoomRequest()})
    assert back.cases == {R1: PREVIOUSLY, R2: LIVE}
    assert entries(back.receipts[R1]) == {("$a2", "m.read", A, None), ("$a3", "m.read", B, None)}
    assert c.view[R1] == {(A, "m.read", None): "$a2", (B, "m.read", None): "$a3"}


def test_live_room_left_out_without_changes_stays_live() -> None:
    c = Conn()
    c.request({R1: timeline(), R2: timeline()})
    c.write(key(R2, B), val("$b1"))
    ans = c.request({R2: RoomRequest()})
    assert ans.demoted == {}
    assert ans.state.rooms[R1] == Sent(LIVE)
    c.write(key(R1, A), val("$a1"))
    assert c.request({R1: RoomRequest()}).cases == {R1: LIVE}


def test_expanded_timeline_of_a_room_sent_before_also_gets_what_changed_meanwhile() -> None:
    c = Conn()
    c.write(key(R1, A), val("$a1"))
    c.request({R1: timeline("$a1"), R2: timeline()})
    c.request({R2: RoomRequest()})
    c.write(key(R1, A), val("$a2"))
    c.request({R2: RoomRequest()})  # R1 demoted, A's move unsent
    c.write(key(R1, B), val("$t0"))
    ans = c.request({R1: RoomRequest(initial=True, timeline=("$t0",))})
    assert ans.cases == {R1: INITIAL}
    assert entries(ans.receipts[R1]) == {("$a2", "m.read", A, None), ("$t0", "m.read", B, None)}


# --- privacy and MSC4102 ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["initial", "live", "previously"])
def test_others_private_receipts_are_never_shown(case: str) -> None:
    c = Conn()
    c.request({R1: timeline(), R2: timeline()})
    if case == "previously":
        c.write(key(R1, A), val("$x"))
        c.request({R2: RoomRequest()})
    c.write(key(R1, A, "m.read.private"), val("$p"))
    c.write(key(R1, B, "m.read.private"), val("$p", thread="main"))
    c.write(key(R1, ME, "m.read.private"), val("$p"))
    request = timeline("$p", "$x") if case == "initial" else RoomRequest()
    if case == "initial":
        c.pos = None  # a new connection
    ans = c.request({R1: request})
    assert ans.cases[R1] == case
    assert {(t, u) for _, t, u, _ in entries(ans.receipts[R1]) if t != "m.read"} == {
        ("m.read.private", ME)
    }
    other = Conn(index=c.index)
    for_a = other.request({R1: timeline("$p")}, user=A).receipts[R1]
    assert ("$p", "m.read.private", A, None) in entries(for_a)
    assert ("$p", "m.read.private", ME, None) not in entries(for_a)


@pytest.mark.parametrize("threaded_first", [True, False])
@pytest.mark.parametrize("rtype", ["m.read", "m.read.private"])
def test_unthreaded_wins_on_a_clash(threaded_first: bool, rtype: str) -> None:
    """MSC4102: one user's unthreaded and threaded receipts on one event show as unthreaded,
    in an initial answer and in a live one."""
    writes = [(key(R1, ME, rtype, "main"), val("$e", 5, "main")), (key(R1, ME, rtype), val("$e"))]
    if not threaded_first:
        writes.reverse()
    c = Conn()
    for k, v in writes:
        c.write(k, v)
    assert entries(c.request({R1: timeline("$e")}).receipts[R1]) == {("$e", rtype, ME, None)}
    live = Conn()
    live.request({R1: timeline()})
    for k, v in writes:
        live.write(k, v)
    assert entries(live.request({R1: RoomRequest()}).receipts[R1]) == {("$e", rtype, ME, None)}


def test_receipt_event_leaves_out_fully_read_and_empty_content() -> None:
    assert receipt_event(R1, ME, [(key(R1, ME, "m.fully_read"), val("$e"))]) is None
    assert receipt_event(R1, ME, [(key(R1, A, "m.read.private"), val("$e"))]) is None
    event = receipt_event(R1, ME, [(key(R1, A), val("$e", 7))])
    assert event == {"type": "m.receipt", "content": {"$e": {"m.read": {A: {"ts": 7}}}}}
    validate_receipt_event(event)


# --- positions ---------------------------------------------------------------------------------


def test_unknown_positions() -> None:
    c = Conn()
    c.request({R1: timeline()})
    good = c.pos
    with pytest.raises(UnknownPos):
        resolve(c.connections, ME, "main", "not-a-pos")
    with pytest.raises(UnknownPos):
        resolve(c.connections, ME, "other-conn", good)  # another connection's position
    with pytest.raises(UnknownPos):
        resolve(c.connections, A, "main", good)  # another user's
    forged = Pos("deadbeef", Pos.decode(good).token).encode()  # type: ignore[arg-type]
    with pytest.raises(UnknownPos):
        resolve(c.connections, ME, "main", forged)
    assert resolve(c.connections, ME, "main", good).token == Pos.decode(good).token  # type: ignore[arg-type]


def test_a_lost_answer_can_be_retried_and_older_positions_are_forgotten() -> None:
    c = Conn()
    c.write(key(R1, A), val("$a"))
    first = c.pos
    c.request({R1: timeline("$a")})
    p1 = c.pos
    c.write(key(R1, A), val("$b"))
    lost = c.request({R1: RoomRequest()}, keep=False)
    lost2 = c.request({R1: RoomRequest()}, keep=False)  # retried, lost again
    assert entries(lost.receipts[R1]) == entries(lost2.receipts[R1])
    again = c.request({R1: RoomRequest()})  # the client's pos is still p1
    assert entries(again.receipts[R1]) == {("$b", "m.read", A, None)}
    c.request({R1: RoomRequest()})  # the client uses its new pos
    with pytest.raises(UnknownPos):  # the client moved on: p1 is forgotten
        resolve(c.connections, ME, "main", p1)
    assert first is None


def test_connections_expire_are_bounded_and_reset_when_too_big() -> None:
    now = [0.0]
    conns = Connections(max_connections=2, ttl_s=10, max_rooms=2, clock=lambda: now[0])
    token = Token((0,), (0,))
    state = State(token, {R1: Sent(LIVE)})
    assert conns.put(ME, "a", "p.a", state)
    assert conns.get(ME, "a", "p.a") == state
    now[0] = 11
    assert conns.get(ME, "a", "p.a") is None  # expired
    for conn in ("a", "b", "c"):
        conns.put(ME, conn, f"p.{conn}", state)
    assert len(conns) == 2
    assert conns.get(ME, "a", "p.a") is None  # the least recently used went first
    assert conns.get(ME, "c", "p.c") == state
    big = State(token, {R1: Sent(LIVE), R2: Sent(LIVE), R3: Sent(LIVE)})
    assert not conns.put(ME, "c", "p.c2", big)
    assert conns.get(ME, "c", "p.c") is None  # reset, not silently shrunk
    assert conns.get(ME, "c", None) == State()  # a new connection starts afresh


def test_one_user_many_connection_ids_push_out_only_their_own() -> None:
    """The issue 12 probe: connection ids are the client's to choose, and the connections
    an API process keeps are shared by every user, so one user cycling through ids pushed
    out everyone's state (their next request: M_UNKNOWN_POS). A user's connections beyond
    `max_per_user` now forget that user's least recently used one."""
    conns = Connections(max_connections=10, max_per_user=3)
    state = State(Token((0,), (0,)), {R1: Sent(LIVE)})
    assert conns.put(B, "phone", "p.b", state)
    for i in range(50):
        assert conns.put(ME, f"c{i}", f"p.{i}", state)
    assert conns.get(B, "phone", "p.b") == state  # another user's state is kept
    assert len(conns) == 4
    assert [conns.get(ME, f"c{i}", f"p.{i}") for i in (46, 47, 48, 49)] == [None] + [state] * 3
    conns.get(ME, "c49", None)  # a fresh start forgets that connection: room for another
    assert conns.put(ME, "new", "p.new", state)
    assert conns.get(ME, "c48", "p.48") == state and len(conns) == 4


def test_caller_kept_state_needs_no_state_of_ours() -> None:
    """A homeserver keeps the per-room statuses itself: any API process can answer."""
    c = Conn()
    c.write(key(R1, A), val("$a"))
    first = c.request({R1: timeline("$a"), R2: timeline()})
    c.write(key(R1, A), val("$b"))
    c.write(key(R2, B), val("$c"))
    elsewhere = Connections()  # another process: it never saw this connection
    with pytest.raises(UnknownPos):
        resolve(elsewhere, ME, "main", c.pos)
    state = resolve(elsewhere, ME, "main", c.pos, caller_keeps_state=True)
    since = first.state.token
    ans = answer(
        c.index, ME, state, {R1: RoomRequest(status=Sent(PREVIOUSLY, since))}, also_live=[R2]
    )
    assert ans.cases == {R1: PREVIOUSLY}
    assert entries(ans.receipts[R1]) == {("$b", "m.read", A, None)}
    assert ans.demoted == {R2: state.token}


def test_answering_from_a_view_behind_the_position_is_refused() -> None:
    c = Conn()
    c.write(key(R1, A), val("$a"))
    c.request({R1: timeline("$a")})
    behind = SyncIndex(2, 1)
    with pytest.raises(ValueError, match="behind"):
        answer(behind, ME, resolve(c.connections, ME, "main", c.pos), {R1: RoomRequest()})


# --- the property ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(1, 4))
def test_what_a_connection_was_sent_equals_the_table_it_is_owed(
    ops: list[tuple], max_rooms: int
) -> None:
    """Applied in order, what a connection was sent equals, for every room of each answer,
    the table restricted to the keys it is owed (see `check_owed`)."""
    check_owed(ops, max_rooms, SyncIndex(2, 1))
