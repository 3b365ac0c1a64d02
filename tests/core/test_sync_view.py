"""The receipts part of /sync (CONTRACT §3-5): initial and incremental, tokens, privacy, MSC4102.

Every answer is checked against the spec: each ephemeral event against `m.receipt`, and the
whole `{"next_batch", "rooms": {"join"}}` body against the 200 response schema of sync.yaml.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from receipt_streams.core.sync_view import BadToken, SyncIndex, Token, render_for_user
from tests.support.spec import validate_receipt_event, validate_sync_response

ME, A, B = "@me:hs1", "@a:hs1", "@b:hs2"
R1, R2, R3, R4, R5 = "!r1:hs1", "!r2:hs1", "!r3:hs2", "!r4:hs1", "!r5:hs1"


def check_response(next_batch: str, rooms: dict[str, Any]) -> None:
    """The whole response validates, and so does each m.receipt event in it."""
    validate_sync_response({"next_batch": next_batch, "rooms": {"join": rooms}})
    for room in rooms.values():
        assert room, "empty rooms are left out"
        events = room.get("ephemeral", {}).get("events", [])
        assert len(events) <= 1, "one m.receipt event per room"
        for event in events:
            assert event["type"] == "m.receipt"
            assert event["content"], "an empty m.receipt is left out"
            validate_receipt_event(event)
        for event in room.get("account_data", {}).get("events", []):
            assert event["type"] == "m.fully_read"
            assert set(event["content"]) == {"event_id"}


def key(room: str, user: str, rtype: str = "m.read", thread: str | None = None) -> ReceiptKey:
    return ReceiptKey(room, user, rtype, thread)


def val(event_id: str, ts: int = 1, thread: str | None = None) -> Receipt:
    return Receipt(event_id, 1, ts, client_data(ts, thread))


class Feed:
    """A SyncIndex fed like the changelogs feed it: offsets grow by one per partition."""

    def __init__(self, receipt_partitions: int = 2, member_partitions: int = 2) -> None:
        self.index = SyncIndex(receipt_partitions, member_partitions)
        self.r_next = [0] * receipt_partitions
        self.m_next = [0] * member_partitions
        self.log: list[tuple] = []

    def receipt(self, k: ReceiptKey, v: Receipt | None, partition: int = 0) -> None:
        self.log.append(("r", partition, k, v))
        self.index.apply_receipt(partition, self.r_next[partition], k, v)
        self.r_next[partition] += 1

    def member(self, room: str, user: str, membership: str | None, partition: int = 0) -> None:
        self.log.append(("m", partition, room, user, membership))
        self.index.apply_membership(partition, self.m_next[partition], room, user, membership)
        self.m_next[partition] += 1

    def replay(self) -> Feed:
        """A fresh index fed the same records: what a restarted process rebuilds."""
        other = Feed(len(self.r_next), len(self.m_next))
        for record in self.log:
            if record[0] == "r":
                other.receipt(*record[2:], partition=record[1])
            else:
                other.member(*record[2:], partition=record[1])
        return other

    def sync(self, user: str, since: str | None = None) -> dict[str, Any]:
        token = self.index.token().encode()
        rooms = self.index.sync(user, Token.decode(since) if since is not None else None)
        check_response(token, rooms)
        return rooms


def receipt_content(room: dict[str, Any]) -> dict[str, Any]:
    [event] = room["ephemeral"]["events"]
    return event["content"]


# --- initial sync ----------------------------------------------------------------------------


def test_initial_sync_shows_only_joined_rooms() -> None:
    f = Feed()
    for room, membership in ((R1, "join"), (R2, "invite"), (R3, "leave"), (R4, "ban")):
        f.member(room, ME, membership)
        f.member(room, A, "join", partition=1)
        f.receipt(key(room, A), val("$e"))
    f.receipt(key(R5, A), val("$e"))  # a room ME never had any membership in
    f.member(R5, A, "join")
    assert set(f.sync(ME)) == {R1}
    assert set(f.sync(A)) == {R1, R2, R3, R4, R5}
    assert f.index.joined_rooms(ME) == [R1]
    assert f.index.membership(R2, ME) == "invite"
    assert f.index.membership(R5, ME) is None


def test_joined_room_without_receipts_is_left_out() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.member(R2, ME, "join")
    f.receipt(key(R2, A), val("$e"))
    assert set(f.sync(ME)) == {R2}


def test_membership_changes_move_rooms_in_and_out() -> None:
    f = Feed()
    f.receipt(key(R1, A), val("$e"))
    f.member(R1, ME, "invite")
    assert f.sync(ME) == {}
    f.member(R1, ME, "join")
    assert set(f.sync(ME)) == {R1}
    f.member(R1, ME, "leave")
    assert f.sync(ME) == {}
    f.member(R1, ME, "join")
    f.member(R1, ME, None)  # a tombstone: membership forgotten
    assert f.sync(ME) == {}


def test_initial_sync_privacy_one_event_per_room() -> None:
    f = Feed()
    for user in (ME, A, B):
        f.member(R1, user, "join")
    f.receipt(key(R1, A), val("$a", 10))
    f.receipt(key(R1, B), val("$b", 11))
    f.receipt(key(R1, ME), val("$m", 12))
    f.receipt(key(R1, A, "m.read.private"), val("$apriv", 13))  # A's secret
    f.receipt(key(R1, ME, "m.read.private"), val("$mpriv", 14))
    f.receipt(key(R1, B, "m.fully_read"), val("$bfr", 15))  # B's secret
    f.receipt(key(R1, ME, "m.fully_read"), val("$mfr", 16))

    mine = f.sync(ME)[R1]
    assert receipt_content(mine) == {
        "$a": {"m.read": {A: {"ts": 10}}},
        "$b": {"m.read": {B: {"ts": 11}}},
        "$m": {"m.read": {ME: {"ts": 12}}},
        "$mpriv": {"m.read.private": {ME: {"ts": 14}}},
    }
    assert mine["account_data"] == {
        "events": [{"type": "m.fully_read", "content": {"event_id": "$mfr"}}]
    }

    a_view = f.sync(A)[R1]
    content = receipt_content(a_view)
    assert content["$apriv"] == {"m.read.private": {A: {"ts": 13}}}
    assert "$mpriv" not in content
    assert "account_data" not in a_view  # A has no read marker; ME's and B's stay hidden

    b_view = f.sync(B)[R1]
    assert "$apriv" not in receipt_content(b_view)
    assert "$mpriv" not in receipt_content(b_view)
    assert b_view["account_data"]["events"] == [
        {"type": "m.fully_read", "content": {"event_id": "$bfr"}}
    ]


def test_public_and_private_on_one_event_share_the_event() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, ME), val("$e", 1))
    f.receipt(key(R1, ME, "m.read.private"), val("$e", 2))
    f.receipt(key(R1, A), val("$e", 3))
    assert receipt_content(f.sync(ME)[R1]) == {
        "$e": {"m.read": {ME: {"ts": 1}, A: {"ts": 3}}, "m.read.private": {ME: {"ts": 2}}}
    }


def test_only_private_of_others_means_room_left_out() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, A, "m.read.private"), val("$e"))
    f.receipt(key(R1, A, "m.fully_read"), val("$e"))
    assert f.sync(ME) == {}


def test_only_own_fully_read_gives_account_data_only() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, ME, "m.fully_read"), val("$e"))
    assert f.sync(ME) == {
        R1: {"account_data": {"events": [{"type": "m.fully_read", "content": {"event_id": "$e"}}]}}
    }


def test_tombstone_removes_a_slot() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, A), val("$e"))
    f.receipt(key(R1, B), val("$f"))
    f.receipt(key(R1, A), None)
    assert receipt_content(f.sync(ME)[R1]) == {"$f": {"m.read": {B: {"ts": 1}}}}
    assert [k.user_id for k, _ in f.index.room_receipts(R1)] == [B]
    assert f.index.room_receipts(R5) == []


# --- incremental sync ------------------------------------------------------------------------


def test_incremental_returns_only_changes_after_the_token() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.member(R2, ME, "join", partition=1)
    f.receipt(key(R1, A), val("$old-a", 1))
    f.receipt(key(R1, B), val("$b", 2))
    f.receipt(key(R2, A), val("$r2", 3), partition=1)
    token = f.index.token().encode()

    assert f.sync(ME, token) == {}  # nothing since

    f.receipt(key(R1, A), val("$mid-a", 4))
    f.receipt(key(R1, A, "m.read.private"), val("$apriv", 5))  # not for ME
    f.receipt(key(R1, A), val("$new-a", 6))  # the same slot again: only this one shows
    f.receipt(key(R1, ME, "m.fully_read"), val("$fr", 7))

    rooms = f.sync(ME, token)
    assert set(rooms) == {R1}, "R2 did not change"
    assert rooms[R1] == {
        "ephemeral": {
            "events": [{"type": "m.receipt", "content": {"$new-a": {"m.read": {A: {"ts": 6}}}}}]
        },
        "account_data": {"events": [{"type": "m.fully_read", "content": {"event_id": "$fr"}}]},
    }

    later = f.index.token().encode()
    assert f.sync(ME, later) == {}


def test_incremental_with_only_a_private_change_of_someone_else_is_empty() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.member(R1, A, "join")
    f.receipt(key(R1, A), val("$e"))
    token = f.index.token().encode()
    f.receipt(key(R1, A, "m.read.private"), val("$f"))
    f.receipt(key(R1, A, "m.fully_read"), val("$f"))
    assert f.sync(ME, token) == {}
    assert receipt_content(f.sync(A, token)[R1]) == {"$f": {"m.read.private": {A: {"ts": 1}}}}


def test_room_joined_after_the_token_is_returned_in_full() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.member(R2, ME, "invite", partition=1)
    f.receipt(key(R1, A), val("$r1"))
    f.receipt(key(R2, A), val("$a", 1), partition=1)
    f.receipt(key(R2, B), val("$b", 2), partition=1)
    f.receipt(key(R2, ME, "m.fully_read"), val("$fr"), partition=1)
    token = f.index.token().encode()
    assert set(f.sync(ME)) == {R1}

    f.member(R2, ME, "join", partition=1)
    rooms = f.sync(ME, token)
    assert set(rooms) == {R2}, "R1 is unchanged, R2 is new"
    assert receipt_content(rooms[R2]) == {
        "$a": {"m.read": {A: {"ts": 1}}},
        "$b": {"m.read": {B: {"ts": 2}}},
    }
    assert rooms[R2]["account_data"]["events"][0]["content"] == {"event_id": "$fr"}
    assert rooms[R2] == f.sync(ME)[R2]


def test_join_on_another_member_partition_uses_that_partition() -> None:
    f = Feed(1, 2)
    f.member(R1, ME, "join", partition=0)
    f.member(R2, ME, "invite", partition=1)
    f.member(R3, A, "join", partition=1)
    f.receipt(key(R1, A), val("$e1"))
    f.receipt(key(R2, A), val("$e2"))
    token = f.index.token()
    assert token.members == (1, 2)
    f.member(R3, B, "join", partition=0)  # moves partition 0 on, not ME's R2 join
    f.member(R2, ME, "join", partition=1)
    assert set(f.sync(ME, token.encode())) == {R2}


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [Token((), ()), Token((0,), (0,)), Token((5, 0, 17), (3,)), Token((10**12,), (1, 2, 3, 4))],
)
def test_token_round_trip(token: Token) -> None:
    raw = token.encode()
    assert Token.decode(raw) == token
    assert raw.isascii() and "=" not in raw and "/" not in raw and "+" not in raw


def _b64(text: bytes) -> str:
    return "r" + base64.urlsafe_b64encode(text).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "r",
        "x" + Token((1,), (1,)).encode()[1:],  # wrong prefix
        "s72594_4483_1934",  # someone else's token (the spec's example)
        "r!!!",
        "r\u00e9t\u00e9",
        _b64(b"1,2"),  # no ';'
        _b64(b"1;2;3"),
        _b64(b"a;1"),
        _b64(b"1;x"),
        _b64(b"1,-1;0"),
        _b64(b"1,,2;0"),
        _b64(b"\xff\xfe;\x00"),
    ],
)
def test_garbage_tokens_raise_bad_token(raw: str) -> None:
    with pytest.raises(BadToken):
        Token.decode(raw)


def test_bad_token_is_a_value_error() -> None:
    assert issubclass(BadToken, ValueError)


@pytest.mark.parametrize("layout", [(1, 2), (3, 2), (2, 1), (2, 3), (0, 0)])
def test_token_for_another_partition_layout_raises(layout: tuple[int, int]) -> None:
    other = SyncIndex(*layout).token()
    f = Feed(2, 2)
    f.member(R1, ME, "join")
    f.receipt(key(R1, A), val("$e"))
    with pytest.raises(BadToken):
        f.index.sync(ME, other)
    with pytest.raises(BadToken):
        f.index.sync(ME, Token.decode(other.encode()))


def test_token_tracks_next_offsets_per_partition() -> None:
    f = Feed(2, 3)
    assert f.index.token() == Token((0, 0), (0, 0, 0))
    f.receipt(key(R1, A), val("$e"), partition=1)
    f.receipt(key(R1, A), val("$f"), partition=1)
    f.member(R1, A, "join", partition=2)
    f.index.skip_member_offset(0, 6)  # a non-membership state record
    assert f.index.token() == Token((0, 2), (7, 0, 1))
    f.index.apply_receipt(1, 0, key(R1, B), val("$g"))  # an older offset never moves it back
    assert f.index.token() == Token((0, 2), (7, 0, 1))


def test_tokens_are_stable_across_a_restart() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.member(R2, ME, "invite", partition=1)
    f.receipt(key(R1, A), val("$a1"))
    f.receipt(key(R2, B), val("$b1"), partition=1)
    token = f.index.token().encode()
    f.receipt(key(R1, A), val("$a2", 2))
    f.receipt(key(R1, ME, "m.read.private"), val("$p", 3), partition=1)
    f.member(R2, ME, "join", partition=1)
    f.receipt(key(R1, B), val("$b2", 4))

    restarted = f.replay()
    assert restarted.index.token().encode() == f.index.token().encode()
    # The same offsets give the same string, also in a process that only read part of the logs.
    assert Feed().index.token().encode() == SyncIndex(2, 2).token().encode()

    before = f.sync(ME, token)
    after = restarted.sync(ME, token)
    assert before == after
    assert set(after) == {R1, R2}
    assert receipt_content(after[R1]) == {
        "$a2": {"m.read": {A: {"ts": 2}}},
        "$p": {"m.read.private": {ME: {"ts": 3}}},
        "$b2": {"m.read": {B: {"ts": 4}}},
    }
    assert restarted.sync(ME) == f.sync(ME)


# --- threads and MSC4102 ---------------------------------------------------------------------


@pytest.mark.parametrize("threaded_first", [True, False])
@pytest.mark.parametrize("rtype", ["m.read", "m.read.private"])
def test_msc4102_unthreaded_wins_in_a_rendered_event(threaded_first: bool, rtype: str) -> None:
    f = Feed()
    f.member(R1, ME, "join")
    writes = [
        (key(R1, ME, rtype, "$root"), val("$e", 5, "$root")),
        (key(R1, ME, rtype), val("$e", 7)),
    ]
    for k, v in writes if threaded_first else writes[::-1]:
        f.receipt(k, v)
    assert receipt_content(f.sync(ME)[R1]) == {"$e": {rtype: {ME: {"ts": 7}}}}


def test_msc4102_across_partitions_and_render_for_user() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, A), val("$e", 7), partition=1)
    f.receipt(key(R1, A, thread="main"), val("$e", 9, "main"), partition=0)
    assert receipt_content(f.sync(ME)[R1]) == {"$e": {"m.read": {A: {"ts": 7}}}}
    # render_for_user on its own, threaded one last:
    room = render_for_user(
        R1,
        ME,
        [(key(R1, A), val("$e", 7)), (key(R1, A, thread="main"), val("$e", 9, "main"))],
    )
    assert receipt_content(room) == {"$e": {"m.read": {A: {"ts": 7}}}}


def test_threaded_receipts_of_one_user_side_by_side() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, A, thread="$root"), val("$in-thread", 1, "$root"))
    f.receipt(key(R1, A, thread="main"), val("$in-main", 2, "main"))
    f.receipt(key(R1, A), val("$unthreaded", 3))
    f.receipt(key(R1, ME, "m.read.private", "$root"), val("$in-thread", 4, "$root"))
    rooms = f.sync(ME)
    assert rooms[R1]["ephemeral"]["events"] == [
        {
            "type": "m.receipt",
            "content": {
                "$in-thread": {
                    "m.read": {A: {"ts": 1, "thread_id": "$root"}},
                    "m.read.private": {ME: {"ts": 4, "thread_id": "$root"}},
                },
                "$in-main": {"m.read": {A: {"ts": 2, "thread_id": "main"}}},
                "$unthreaded": {"m.read": {A: {"ts": 3}}},
            },
        }
    ]


def test_thread_and_unthreaded_of_different_users_on_one_event_do_not_clash() -> None:
    f = Feed()
    f.member(R1, ME, "join")
    f.receipt(key(R1, A), val("$e", 1))
    f.receipt(key(R1, B, thread="main"), val("$e", 2, "main"))
    assert receipt_content(f.sync(ME)[R1]) == {
        "$e": {"m.read": {A: {"ts": 1}, B: {"ts": 2, "thread_id": "main"}}}
    }


# --- property: initial at the end == initial at a token + incremental since it ---------------

USERS = (ME, A, B)
ROOMS = (R1, R2, R3)
# Each event lives in one thread mode, so no user can have an unthreaded and a threaded receipt
# on the same event (no MSC4102 clash) and no two slots of a user can share an event.
EVENT_MODES: dict[str, str | None] = {
    "$u0": None,
    "$u1": None,
    "$m0": "main",
    "$m1": "main",
    "$t0": "$root",
}

_receipt_op = st.tuples(
    st.just("r"),
    st.sampled_from((R1, R1, R2, R3)),
    st.sampled_from(USERS),
    st.sampled_from(("m.read", "m.read.private", "m.fully_read")),
    st.sampled_from(sorted(EVENT_MODES)),
    st.integers(0, 10**6),
)
_member_op = st.tuples(
    st.just("m"), st.sampled_from(ROOMS), st.sampled_from(("join", "invite", "skip"))
)
_ops = st.tuples(
    st.lists(_receipt_op, min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 40), _member_op), max_size=8),
).map(lambda rm: _interleave(*rm))


def _interleave(receipts: list[tuple], members: list[tuple[int, tuple]]) -> list[tuple]:
    ops = list(receipts)
    for at, op in sorted(members, key=lambda m: -m[0]):
        ops.insert(at, op)
    return ops


def _build(ops: list[tuple]) -> list[tuple]:
    """Changelog records from ops: ME joins rooms (maybe after an invite) and never leaves."""
    joined = {R1}  # joined from the start to one room, so the cut often has something
    records: list[tuple] = [("m", (ROOMS.index(R1) + 1) % 2, R1, ME, "join")]
    for op in ops:
        if op[0] == "r":
            _, room, user, rtype, event_id, ts = op
            thread = None if rtype == "m.fully_read" else EVENT_MODES[event_id]
            partition = ROOMS.index(room) % 2
            records.append(
                ("r", partition, key(room, user, rtype, thread), val(event_id, ts, thread))
            )
        else:
            _, room, what = op
            partition = (ROOMS.index(room) + 1) % 2
            if what == "skip":
                records.append(("skip", partition))
            elif what == "join" or room not in joined:
                records.append(("m", partition, room, ME, what))
                if what == "join":
                    joined.add(room)
    return records


class _Feeder:
    """Applies records in order, numbering offsets per changelog partition."""

    def __init__(self) -> None:
        self.index = SyncIndex(2, 2)
        self.r_next, self.m_next = [0, 0], [0, 0]

    def feed(self, records: list[tuple]) -> _Feeder:
        for record in records:
            p = record[1]
            if record[0] == "r":
                self.index.apply_receipt(p, self.r_next[p], record[2], record[3])
                self.r_next[p] += 1
            elif record[0] == "m":
                self.index.apply_membership(p, self.m_next[p], *record[2:])
                self.m_next[p] += 1
            else:
                self.index.skip_member_offset(p, self.m_next[p])
                self.m_next[p] += 1
        return self


View = dict[str, dict[tuple[str, str, str | None], tuple[str, Any]]]


def _apply(view: View, rooms: dict[str, Any]) -> View:
    """What a client keeps: per room, (user, type, thread) -> (event, data) (the latest wins)."""
    for room_id, room in rooms.items():
        slots = view.setdefault(room_id, {})
        for event in room.get("ephemeral", {}).get("events", []):
            for event_id, by_type in event["content"].items():
                for rtype, by_user in by_type.items():
                    for user, data in by_user.items():
                        slots[(user, rtype, data.get("thread_id"))] = (event_id, data)
        for event in room.get("account_data", {}).get("events", []):
            slots[(ME, "m.fully_read", None)] = (event["content"]["event_id"], None)
    return view


def _entries(view: View) -> dict[tuple[str, str, str, str], Any]:
    """Per (room, event, type, user) entry."""
    return {
        (room, event_id, rtype, user): data
        for room, slots in view.items()
        for (user, rtype, _), (event_id, data) in slots.items()
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, data=st.data())
def test_initial_at_end_equals_initial_at_token_plus_incremental(ops: list, data: Any) -> None:
    records = _build(ops)
    cut = data.draw(st.integers(0, len(records)), label="cut")
    partial = _Feeder().feed(records[:cut])
    token = partial.index.token()
    start = partial.index.sync(ME, None)

    at_end = _Feeder().feed(records).index  # a fresh process: the token still means the same
    full = at_end.sync(ME, None)
    incremental = at_end.sync(ME, Token.decode(token.encode()))
    next_batch = at_end.token().encode()
    check_response(next_batch, full)
    check_response(next_batch, incremental)

    expected = _apply({}, full)
    updated = _apply(_apply({}, start), incremental)
    assert updated == expected
    assert _entries(updated) == _entries(expected)
    assert set(incremental) <= set(full)
    assert at_end.sync(ME, at_end.token()) == {}

    # Feeding the rest into the cut index gives the same token and answers as the fresh one.
    partial.feed(records[cut:])
    assert partial.index.token().encode() == next_batch
    assert partial.index.sync(ME, None) == full
    assert partial.index.sync(ME, token) == incremental


def test_a_purge_and_an_erasure_are_forgotten_by_every_sync() -> None:
    """The tombstones of a room purge (every slot, then the room's memberships) and of a
    user erasure: no initial sync shows them again, no incremental sync re-sends anything,
    other rooms and users are untouched, and a restart rebuilds the same view."""
    f = Feed()
    for room in (R1, R2):
        for user in (ME, A, B):
            f.member(room, user, "join")
        f.receipt(key(room, A), val("$a"))
        f.receipt(key(room, B), val("$b"))
        f.receipt(key(room, ME, "m.read.private"), val("$p"))
        f.receipt(key(room, ME, "m.fully_read"), val("$f"))
    before = f.index.token().encode()
    for user in (A, B):  # purge R1
        f.receipt(key(R1, user), None)
    f.receipt(key(R1, ME, "m.read.private"), None)
    f.receipt(key(R1, ME, "m.fully_read"), None)
    for user in (ME, A, B):
        f.member(R1, user, None)
    f.receipt(key(R2, B), None)  # erase B
    for user in (ME, A):
        assert R1 not in f.sync(user)
        assert f.sync(user, before) == {}
    assert receipt_content(f.sync(A)[R2]) == {"$a": {"m.read": {A: {"ts": 1}}}}
    assert receipt_content(f.sync(ME)[R2]) == {
        "$a": {"m.read": {A: {"ts": 1}}},
        "$p": {"m.read.private": {ME: {"ts": 1}}},
    }
    assert f.index.room_receipts(R1) == [] and R1 not in f.index.rooms
    assert f.replay().sync(ME) == f.sync(ME)
    # The room starts afresh: a new receipt after new joins is shown as usual.
    f.member(R1, ME, "join")
    f.receipt(key(R1, A), val("$new"))
    assert receipt_content(f.sync(ME)[R1]) == {"$new": {"m.read": {A: {"ts": 1}}}}
