"""Room membership: joined members, per-server counts, crash-safe re-application."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.core.membership import (
    MembershipWrites,
    MemberState,
    RoomServers,
    apply_membership,
)
from receipt_streams.core.models import MembershipChange
from receipt_streams.core.state import RoomState

ROOM = "!r:hs1"


def change(user: str, membership: str, pos: int) -> MembershipChange:
    return MembershipChange(room_id=ROOM, user_id=user, membership=membership, stream_pos=pos)


def apply(state: RoomState, c: MembershipChange) -> MembershipWrites:
    """Apply a change the way the processor does: servers first, then member."""
    writes = apply_membership(c, state.member(ROOM, c.user_id), state.servers(ROOM))
    if writes.servers is not None:
        state.put_servers(ROOM, writes.servers)
    if writes.member is not None:
        state.put_member(ROOM, c.user_id, writes.member)
    return writes


def counts(state: RoomState) -> dict[str, int]:
    servers = state.servers(ROOM)
    return dict(servers.counts) if servers else {}


def test_member_state_flags() -> None:
    assert MemberState("join", 1).joined and not MemberState("join", 1).gone
    for gone in ("leave", "ban"):
        assert MemberState(gone, 1).gone and not MemberState(gone, 1).joined
    for pending in ("invite", "knock"):
        m = MemberState(pending, 1)
        assert not m.joined and not m.gone


def test_join_and_leave_count_per_server() -> None:
    state = RoomState({})
    apply(state, change("@a:hs1", "join", 1))
    apply(state, change("@b:hs1", "join", 2))
    apply(state, change("@c:hs2", "join", 3))
    apply(state, change("@d:hs3", "invite", 4))  # invited is not joined
    assert counts(state) == {"hs1": 2, "hs2": 1}
    servers = state.servers(ROOM)
    assert servers is not None
    assert servers.servers() == {"hs1", "hs2"}
    assert servers.has("hs2") and not servers.has("hs3")

    apply(state, change("@a:hs1", "leave", 5))
    assert counts(state) == {"hs1": 1, "hs2": 1}
    apply(state, change("@c:hs2", "ban", 6))
    assert counts(state) == {"hs1": 1}  # a server at zero is gone from the counts
    assert state.servers(ROOM).servers() == {"hs1"}
    assert state.member(ROOM, "@c:hs2") == MemberState("ban", 6)
    apply(state, change("@d:hs3", "join", 7))
    assert counts(state) == {"hs1": 1, "hs3": 1}


def test_server_with_port_counts_separately() -> None:
    state = RoomState({})
    apply(state, change("@a:hs1", "join", 1))
    apply(state, change("@a:hs1:8448", "join", 2))
    apply(state, change("@b:[::1]:8448", "join", 3))
    assert counts(state) == {"hs1": 1, "hs1:8448": 1, "[::1]:8448": 1}


def test_join_to_join_does_not_count_twice() -> None:
    state = RoomState({})
    apply(state, change("@a:hs1", "join", 1))
    writes = apply(state, change("@a:hs1", "join", 2))  # e.g. a displayname change
    assert writes.servers is None
    assert writes.member == MemberState("join", 2)
    assert counts(state) == {"hs1": 1}


def test_leave_without_a_join_does_not_count() -> None:
    state = RoomState({})
    writes = apply(state, change("@a:hs1", "leave", 1))
    assert writes.servers is None
    assert counts(state) == {}
    assert state.member(ROOM, "@a:hs1") == MemberState("leave", 1)


def test_same_change_twice_changes_nothing() -> None:
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    for c in (change("@a:hs1", "join", 1), change("@b:hs2", "join", 2)):
        apply(state, c)
        snapshot = dict(store)
        assert apply(state, c) == MembershipWrites(None, None)
        assert store == snapshot
    assert counts(state) == {"hs1": 1, "hs2": 1}


def test_older_change_is_ignored() -> None:
    state = RoomState({})
    apply(state, change("@a:hs1", "join", 5))
    assert apply(state, change("@a:hs1", "leave", 3)) == MembershipWrites(None, None)
    assert state.member(ROOM, "@a:hs1") == MemberState("join", 5)
    assert counts(state) == {"hs1": 1}


def crash_after_servers(store: dict[bytes, bytes], c: MembershipChange) -> None:
    """Apply `c`, but lose its member entry: the store keeps a prefix of the write sequence."""
    state = RoomState(store)
    writes = apply_membership(c, state.member(ROOM, c.user_id), state.servers(ROOM))
    assert writes.servers is not None, "the change must move a count for this test"
    state.put_servers(ROOM, writes.servers)


def test_crash_prefix_join_is_not_double_counted() -> None:
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    apply(state, change("@a:hs1", "join", 1))
    join_b = change("@b:hs1", "join", 2)
    crash_after_servers(store, join_b)
    assert counts(state) == {"hs1": 2}
    assert state.member(ROOM, "@b:hs1") is None  # member entry lost
    # After the restart, the input is read again from before the crash.
    apply(state, change("@a:hs1", "join", 1))
    writes = apply(state, join_b)
    assert writes.servers is None
    assert counts(state) == {"hs1": 2}
    assert state.member(ROOM, "@b:hs1") == MemberState("join", 2)
    # And the room goes on normally.
    apply(state, change("@b:hs1", "leave", 3))
    assert counts(state) == {"hs1": 1}


def test_crash_prefix_leave_is_not_double_counted() -> None:
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    apply(state, change("@a:hs1", "join", 1))
    apply(state, change("@b:hs1", "join", 2))
    leave_a = change("@a:hs1", "leave", 3)
    crash_after_servers(store, leave_a)
    assert counts(state) == {"hs1": 1}
    assert state.member(ROOM, "@a:hs1") == MemberState("join", 1)
    apply(state, leave_a)
    assert counts(state) == {"hs1": 1}
    assert state.member(ROOM, "@a:hs1") == MemberState("leave", 3)


def test_crash_prefix_last_member_of_a_server() -> None:
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    apply(state, change("@a:hs2", "join", 1))
    leave = change("@a:hs2", "leave", 2)
    crash_after_servers(store, leave)
    assert counts(state) == {}
    apply(state, leave)
    assert counts(state) == {}
    assert state.servers(ROOM) is not None and not state.servers(ROOM).has("hs2")


def test_room_servers_round_trip_through_the_store() -> None:
    state = RoomState({})
    state.put_servers(ROOM, RoomServers({"hs1": 2}, ("@a:hs1", 7)))
    assert state.servers(ROOM) == RoomServers({"hs1": 2}, ("@a:hs1", 7))
    state.put_servers(ROOM, RoomServers({}, None))
    assert state.servers(ROOM) == RoomServers({}, None)


USERS = ["@a:hs1", "@b:hs1", "@c:hs2", "@d:hs3"]
MEMBERSHIPS = ["join", "leave", "invite", "ban", "knock"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(MEMBERSHIPS)), max_size=25),
    st.data(),
)
def test_counts_match_joined_members_with_crashes_and_replays(
    steps: list[tuple[str, str]], data: st.DataObject
) -> None:
    """Whatever crashes (a lost member entry) and replays happen, the counts equal the
    servers of the joined members."""
    changes = [change(u, m, pos) for pos, (u, m) in enumerate(steps, start=1)]
    store: dict[bytes, bytes] = {}
    state = RoomState(store)
    i, crashes = 0, 0
    while i < len(changes):
        c = changes[i]
        writes = apply_membership(c, state.member(ROOM, c.user_id), state.servers(ROOM))
        if writes.servers is not None:
            state.put_servers(ROOM, writes.servers)
        if writes.member is not None and crashes < 5 and data.draw(st.booleans(), label="crash"):
            # Member entry lost: restart from an earlier committed offset.
            crashes += 1
            i = data.draw(st.integers(0, i), label="restart at")
            continue
        if writes.member is not None:
            state.put_member(ROOM, c.user_id, writes.member)
        i += 1
    latest: dict[str, str] = {}
    for c in changes:
        latest[c.user_id] = c.membership
    expected: dict[str, int] = {}
    for user, membership in latest.items():
        if membership == "join":
            server = user.split(":", 1)[1]
            expected[server] = expected.get(server, 0) + 1
    assert counts(state) == expected
