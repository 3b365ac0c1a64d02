"""Room membership: who is joined, and which servers are in a room.

The membership of each (room, user) and the per-room server counts are two entries of one
changelog, written in that order (servers first, then member). After a crash the store holds a
prefix of that write sequence, so a change is applied again exactly when its member entry is
missing, and `RoomServers.last` tells whether its server count was already moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from receipt_streams.core.ids import server_of
from receipt_streams.core.models import MembershipChange


class MemberState(NamedTuple):
    membership: str
    stream_pos: int

    @property
    def joined(self) -> bool:
        return self.membership == "join"

    @property
    def gone(self) -> bool:
        """Known not to be in the room: receipts are refused at once, not held."""
        return self.membership in ("leave", "ban")


@dataclass(frozen=True, slots=True)
class RoomServers:
    """Joined members per server, and the last (user, stream_pos) that moved a count."""

    counts: dict[str, int] = field(default_factory=dict)
    last: tuple[str, int] | None = None

    def servers(self) -> set[str]:
        return {server for server, n in self.counts.items() if n > 0}

    def has(self, server: str) -> bool:
        return self.counts.get(server, 0) > 0


class MembershipWrites(NamedTuple):
    """What to write, in this order; None means leave that entry as it is."""

    servers: RoomServers | None
    member: MemberState | None


def apply_membership(
    change: MembershipChange, member: MemberState | None, servers: RoomServers | None
) -> MembershipWrites:
    if member is not None and change.stream_pos <= member.stream_pos:
        return MembershipWrites(None, None)  # old or repeated change
    new_member = MemberState(change.membership, change.stream_pos)
    was_joined = member is not None and member.joined
    if was_joined == new_member.joined:
        return MembershipWrites(None, new_member)
    current = servers or RoomServers()
    stamp = (change.user_id, change.stream_pos)
    if current.last == stamp:
        return MembershipWrites(None, new_member)  # count moved before a crash
    server = server_of(change.user_id) or ""
    counts = dict(current.counts)
    counts[server] = counts.get(server, 0) + (1 if new_member.joined else -1)
    if counts[server] <= 0:
        del counts[server]
    return MembershipWrites(RoomServers(counts, stamp), new_member)
