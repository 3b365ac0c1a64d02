"""The judges themselves, on hand-made records: each names what is wrong."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from tests.support import judging


class Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0


def change(offset: int, user: str, event: str, pos: int, rtype: str = "m.read") -> Rec:
    key = orjson.dumps(["!r:hs1", user, rtype, None])
    value = orjson.dumps({"event_id": event, "stream_pos": pos, "ts": pos, "data": {"ts": pos}})
    return Rec(key, value, 0, offset)


def delta(seq: int, **parts: Any) -> Rec:
    return Rec(b"!r:hs1", orjson.dumps({"room_id": "!r:hs1", "seq": seq, "ts": 0, **parts}))


def public(event: str, user: str, rtype: str = "m.read", ts: int = 1) -> dict:
    return {"type": "m.receipt", "content": {event: {rtype: {user: {"ts": ts}}}}}


def test_table_and_backward_steps() -> None:
    log = [change(0, "@a:hs1", "$e2", 2), change(1, "@a:hs1", "$e1", 1)]
    expected = judging.latest_per_key(log[:1])
    assert judging.judge_table(log[:1], expected) == []
    [older] = judging.judge_table(log, expected)
    assert older.startswith("1 keys older than the reference (of 1)")
    [steps] = judging.judge_no_backward_steps(log)
    assert steps.startswith("1 backward steps") and "pos 2 (p0@0) -> 1 (p0@1)" in steps


def test_stale_deltas_and_the_deltas_view() -> None:
    positions = {("!r:hs1", "$e1"): 1, ("!r:hs1", "$e2"): 2}
    deltas = [
        delta(5, receipt=public("$e2", "@a:hs1", ts=2)),
        delta(3, receipt=public("$e1", "@a:hs1")),
    ]
    [stale] = judging.judge_stale_deltas(deltas, positions)
    assert "seq 3 brings pos 1 after seq 5 gave pos 2" in stale
    table = judging.latest_per_key([change(0, "@a:hs1", "$e2", 2)])
    assert judging.judge_deltas(deltas[:1], table) == []
    assert judging.judge_deltas(deltas, table)[0].startswith("1 slots")


def test_private_leaks() -> None:
    mine = {"@b:hs1": public("$e1", "@b:hs1", "m.read.private")}
    theirs = {"@b:hs1": public("$e1", "@c:hs1", "m.read.private")}
    assert judging.judge_private([delta(1, private=mine)], []) == []
    leaks = [
        delta(1, receipt=public("$e1", "@b:hs1", "m.read.private")),
        delta(2, private=theirs),
    ]
    edu = {"destination": "hs2", "content": {"!r:hs1": {"m.read.private": {}}}}
    [found] = judging.judge_private(leaks, [Rec(b"hs2", orjson.dumps(edu))])
    assert found.startswith("3 private leaks")
