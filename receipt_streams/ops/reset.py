"""`ctl reset`: move the fold's input offsets, as Kafka Streams' reset tool does, to replay.

The plan is pure (`plan_reset`); reading offsets and committing them are small I/O steps.
The fold's group must have no members while its offsets move: the broker refuses commits
from outside a live group, and a live worker would overwrite them at its next commit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from receipt_streams.config import Settings
from receipt_streams.ops import kafka
from receipt_streams.ops.groups import fold_group, reset_inputs
from receipt_streams.ops.output import CtlError, table
from receipt_streams.ops.timespec import iso

Kind = Literal["earliest", "latest", "datetime", "offset", "shift"]

STATE_NOTE = (
    "Local state and changelogs are kept: the fold replays the inputs over its existing table. "
    "A receipt never moves backwards (CONTRACT section 4, rule 2): a replayed receipt whose "
    "event is not after the stored one changes nothing, writes no changelog record and emits "
    "no sync delta, so what is already applied stays as it is "
    "(tests/ops/test_reset_broker.py checks this on a real broker). Replayed records that "
    "were rejected before go to the DLQ again, "
    "unless their cause has gone (a join or an event that arrived since): then they fold. A "
    "receipt equal to the stored one may re-send its federation EDU (idempotent for the "
    "remote server). To build a table from the inputs alone, use `ctl rebuild --into APP_ID2` "
    "and `ctl diff`; --wipe-local only makes a worker restore its stores from the changelogs."
)


@dataclass(frozen=True)
class Target:
    kind: Kind
    value: int = 0  # datetime: epoch ms; offset: the offset; shift: +/-N


@dataclass(frozen=True)
class Move:
    topic: str
    partition: int
    current: int | None  # None: nothing committed (the fold would start at the beginning)
    new: int

    @property
    def changes(self) -> bool:
        return self.current != self.new


def plan_reset(
    target: Target,
    current: dict[TopicPartition, int],
    begin: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
    at_time: dict[TopicPartition, int | None] | None = None,
) -> list[Move]:
    """Where each input partition goes, kept within what the broker still holds.

    `at_time`: for a datetime, the first offset whose timestamp is at or after it (None when
    every record is older: the partition goes to its end)."""
    moves = []
    for tp in sorted(end):
        lo, hi, now = begin[tp], end[tp], current.get(tp)
        if target.kind == "earliest":
            new = lo
        elif target.kind == "latest":
            new = hi
        elif target.kind == "offset":
            new = target.value
        elif target.kind == "shift":
            new = (now if now is not None else lo) + target.value
        else:
            found = (at_time or {}).get(tp)
            new = hi if found is None else found
        moves.append(Move(tp.topic, tp.partition, now, min(max(new, lo), hi)))
    return moves


def render_plan(moves: list[Move], target: Target) -> str:
    what = {
        "earliest": "the earliest offsets",
        "latest": "the end (skip everything not yet folded)",
        "datetime": f"the first record at or after {iso(target.value)}",
        "offset": f"offset {target.value}",
        "shift": f"a shift of {target.value:+d}",
    }[target.kind]
    rows = [
        [m.topic, m.partition, m.current, m.new, "" if m.changes else "(unchanged)"] for m in moves
    ]
    replayed = sum(max(0, (m.current or 0) - m.new) for m in moves if m.current is not None)
    return (
        f"reset to {what}:\n"
        + table(["topic", "partition", "current", "new", ""], rows)
        + f"\n{replayed} input records will be replayed."
    )


async def read_plan(s: Settings, target: Target) -> tuple[list[Move], Any]:
    group_id = fold_group(s)
    groups = await kafka.describe_groups(s, [group_id])
    async with kafka.started(kafka.consumer(s)) as c:
        tps = await kafka.topic_partitions(c, reset_inputs(s))
        begin = await c.beginning_offsets(tps)
        end = await c.end_offsets(tps)
        at_time: dict[TopicPartition, int | None] = {}
        if target.kind == "datetime":
            found = await c.offsets_for_times({tp: target.value for tp in tps})
            at_time = {tp: (f.offset if f is not None else None) for tp, f in found.items()}
    current = {tp: o for tp, o in groups[group_id].committed.items() if tp in end}
    return plan_reset(target, current, begin, end, at_time), groups[group_id]


async def commit(s: Settings, moves: list[Move], wait_s: float) -> None:
    """Commit the new offsets as the fold's group, from outside it (manual assignment); the
    broker accepts that only once the group is empty, so retry for `wait_s` (a killed
    worker's membership lasts until its session times out)."""
    offsets = {TopicPartition(m.topic, m.partition): m.new for m in moves}
    deadline = time.monotonic() + wait_s
    while True:
        c = kafka.consumer(s, group_id=fold_group(s))
        try:
            async with kafka.started(c):
                c.assign(list(offsets))
                await c.commit(offsets)
                return
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise CtlError(
                    f"the broker refused the commit for group {fold_group(s)!r}: {exc!r}",
                    "the group still has live members: stop every worker of this app "
                    f"(a killed worker leaves after {s.session_timeout_s:g} s) and run again",
                ) from exc
            await asyncio.sleep(1)


def members_error(group: Any) -> CtlError:
    hosts = ", ".join(sorted({f"{m.client_id}@{m.host}" for m in group.members}))
    return CtlError(
        f"group {group.group_id!r} has {len(group.members)} active member(s) ({hosts})",
        "stop the workers first (their offsets would overwrite the reset), or pass --force "
        "if they are already dead and only their sessions linger",
    )


def summary(moves: list[Move], target: Target, applied: bool) -> dict[str, Any]:
    return {
        "target": asdict(target),
        "applied": applied,
        "moves": [asdict(m) for m in moves],
        "state": STATE_NOTE,
    }
