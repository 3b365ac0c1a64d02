"""Which thread an event is in (client-server spec, "Threaded read receipts").

An event is in thread T if it has an `m.thread` relation to T, or if following its relations
reaches an event with an `m.thread` relation to T, at most 3 hops. Everything else, thread
roots and events related to a root by other relations included, is in `main`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

MAIN = "main"
MAX_HOPS = 3
THREAD_REL = "m.thread"


class EventInfo(NamedTuple):
    """What the event index keeps of an event: its order, sender, relation, and when it was
    sent (`origin_server_ts`, for the history feed's time to read; None in entries written
    before it was kept)."""

    stream_pos: int
    sender: str
    rel_type: str | None = None
    parent: str | None = None
    origin_server_ts: int | None = None


def thread_of(event_id: str, lookup: Callable[[str], EventInfo | None]) -> str:
    """The thread root's event ID, or `main`. Unknown parents end the walk in `main`."""
    current = event_id
    for _ in range(MAX_HOPS):
        info = lookup(current)
        if info is None or info.parent is None:
            return MAIN
        if info.rel_type == THREAD_REL:
            return info.parent
        current = info.parent
    return MAIN
