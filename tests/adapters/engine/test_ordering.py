"""InputBuffers: one partition's input topics merged by record timestamp.

Each topic partition keeps its own order; a partition waits (at most `max_idle_ms`) while one
of its topics is empty but may still have records on the broker that are not fetched yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from receipt_streams.adapters.engine.ordering import InputBuffers

IDLE = 500
R, J, M = "receipts", "joins", "members"


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int


Tp = tuple[str, int]


def recs(tp: Tp, timestamps: Iterable[int], start: int = 0) -> list[Rec]:
    """Records of `tp` with consecutive offsets from `start`, in the given timestamp order."""
    return [Rec(tp[0], tp[1], start + i, ts) for i, ts in enumerate(timestamps)]


def caught_up(buffers: InputBuffers, tp: Tp, records: list[Rec]) -> None:
    """Buffer `records` and report the broker's end just past the last one."""
    buffers.add(tp, records, records[-1].offset + 1)


def only(records: list[Rec], tp: Tp) -> list[Rec]:
    return [r for r in records if (r.topic, r.partition) == tp]


def stamps(records: list[Rec]) -> list[int]:
    return [r.timestamp for r in records]


def make(*tps: Tp, idle: int = IDLE) -> InputBuffers:
    buffers = InputBuffers(idle)
    buffers.assign(list(tps))
    return buffers


# --- merging -------------------------------------------------------------------------------


def test_two_topics_merge_by_timestamp() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    ra, rb = recs(a, [1, 4, 6, 9]), recs(b, [2, 3, 7, 8])
    caught_up(buffers, a, ra)
    caught_up(buffers, b, rb)
    out = buffers.take(0, now_ms=0)
    assert stamps(out) == [1, 2, 3, 4, 6, 7, 8, 9]
    assert only(out, a) == ra and only(out, b) == rb
    assert not buffers.pending()


def test_three_topics_merge_by_timestamp() -> None:
    a, b, c = (R, 3), (J, 3), (M, 3)
    buffers = make(a, b, c)
    caught_up(buffers, a, recs(a, [5, 10, 15]))
    caught_up(buffers, b, recs(b, [1, 11]))
    caught_up(buffers, c, recs(c, [7, 8, 20]))
    assert stamps(buffers.take(3, now_ms=0)) == [1, 5, 7, 8, 10, 11, 15, 20]


def test_a_topic_keeps_its_own_order_when_its_timestamps_go_back() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    ra, rb = recs(a, [5, 1, 9, 2]), recs(b, [3, 4])
    caught_up(buffers, a, ra)
    caught_up(buffers, b, rb)
    out = buffers.take(0, now_ms=0)
    assert only(out, a) == ra
    assert only(out, b) == rb
    # b's records go before a's head (5); a's late 1 and 2 stay behind their predecessors.
    assert stamps(out) == [3, 4, 5, 1, 9, 2]


def test_equal_timestamps_all_come_out() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    ra, rb = recs(a, [1, 1, 2]), recs(b, [1, 2, 2])
    caught_up(buffers, a, ra)
    caught_up(buffers, b, rb)
    out = buffers.take(0, now_ms=0)
    assert sorted(stamps(out)) == stamps(out)
    assert only(out, a) == ra and only(out, b) == rb


def test_a_single_topic_partition_never_waits() -> None:
    a = (R, 0)
    buffers = make(a)
    ra = recs(a, [3, 1, 2])
    buffers.add(a, ra, None)  # end unknown: irrelevant without another topic to wait for
    assert buffers.take(0, now_ms=0) == ra


def test_take_of_an_unknown_or_empty_partition_is_empty() -> None:
    buffers = make((R, 0), (J, 0))
    assert buffers.take(0, now_ms=0) == []
    assert buffers.take(7, now_ms=0) == []


# --- waiting for a topic that may have unfetched records ---------------------------------


def test_waits_while_the_other_topics_end_is_unknown_then_enforces() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    ra = recs(a, [1, 2, 3])
    caught_up(buffers, a, ra)
    assert buffers.take(0, now_ms=1000) == []
    assert buffers.take(0, now_ms=1000 + IDLE - 1) == []
    assert buffers.buffered(a) == 3
    assert buffers.take(0, now_ms=1000 + IDLE) == ra  # the idle limit: processed anyway
    assert not buffers.pending()


def test_waits_while_the_other_topics_end_is_past_what_was_fetched() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, a, recs(a, [0]))
    buffers.add(b, recs(b, [1, 2]), 5)  # offsets 2..4 are on the broker, not fetched yet
    assert stamps(buffers.take(0, now_ms=0)) == [0, 1, 2]  # a is caught up: no wait
    ra = recs(a, [10, 11], start=1)
    buffers.add(a, ra, None)
    assert buffers.take(0, now_ms=10) == []  # b is empty and has more on the broker
    assert buffers.take(0, now_ms=10 + IDLE - 1) == []
    assert buffers.take(0, now_ms=10 + IDLE) == ra


def test_a_caught_up_empty_topic_does_not_block() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, b, recs(b, [1, 2]))
    caught_up(buffers, a, recs(a, [0]))
    assert stamps(buffers.take(0, now_ms=0)) == [0, 1, 2]
    # b is empty now but caught up (end 2 == next offset 2): a's new records go at once.
    buffers.add(a, recs(a, [3, 4], start=1), None)
    assert stamps(buffers.take(0, now_ms=1)) == [3, 4]


def test_a_topic_ending_with_a_commit_marker_is_caught_up_at_the_consumers_position() -> None:
    a, b = (R, 0), (J, 0)  # b is written in transactions: a commit marker follows its records
    buffers = make(a, b)
    caught_up(buffers, a, recs(a, [0]))
    buffers.add(b, recs(b, [1, 2]), 4, position=3)  # offset 2 is the marker: no record shows it
    assert stamps(buffers.take(0, now_ms=0)) == [0, 1, 2]
    ra = recs(a, [10, 11], start=1)
    buffers.add(a, ra, None)
    buffers.add(b, [], 3, position=3)
    assert buffers.take(0, now_ms=1) == ra  # no wait for records that are not there


def test_a_caught_up_topic_blocks_again_once_its_end_moves() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, b, recs(b, [1]))
    caught_up(buffers, a, recs(a, [2]))
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2]
    buffers.add(b, [], 2)  # a new b record on the broker
    buffers.add(a, recs(a, [5], start=1), None)
    assert buffers.take(0, now_ms=0) == []
    buffers.add(b, recs(b, [4], start=1), None)
    assert stamps(buffers.take(0, now_ms=1)) == [4, 5]


def test_only_the_safe_records_come_out_while_waiting() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.add(a, recs(a, [1, 2, 10]), None)
    buffers.add(b, recs(b, [3]), None)  # b's end unknown: more may follow
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2, 3]
    assert buffers.buffered(a) == 1  # 10 waits: b's next record may be older
    buffers.add(b, recs(b, [7], start=1), None)
    assert stamps(buffers.take(0, now_ms=1)) == [7]
    assert buffers.take(0, now_ms=IDLE) == []  # still within b's idle limit (since 1)
    assert stamps(buffers.take(0, now_ms=1 + IDLE)) == [10]


def test_the_idle_clock_restarts_after_each_wait() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.add(a, recs(a, [1]), None)
    assert buffers.take(0, now_ms=0) == []
    assert stamps(buffers.take(0, now_ms=IDLE)) == [1]
    buffers.add(a, recs(a, [2], start=1), None)
    assert buffers.take(0, now_ms=IDLE + 10) == []  # a fresh wait, not the expired one
    assert buffers.take(0, now_ms=2 * IDLE + 9) == []
    assert stamps(buffers.take(0, now_ms=2 * IDLE + 10)) == [2]


def test_the_idle_clock_restarts_when_the_missing_topic_arrives() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.add(a, recs(a, [5, 20]), None)
    assert buffers.take(0, now_ms=0) == []
    buffers.add(b, recs(b, [6]), None)
    assert stamps(buffers.take(0, now_ms=IDLE - 1)) == [5, 6]  # 20 waits again for b
    assert buffers.take(0, now_ms=IDLE) == []  # the old wait (since 0) is not reused
    assert stamps(buffers.take(0, now_ms=2 * IDLE - 1)) == [20]


def test_zero_idle_never_waits() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b, idle=0)
    buffers.add(a, recs(a, [3, 4]), None)
    assert stamps(buffers.take(0, now_ms=0)) == [3, 4]


def test_partitions_are_independent() -> None:
    a0, b0, a1, b1 = (R, 0), (J, 0), (R, 1), (J, 1)
    buffers = make(a0, b0, a1, b1)
    buffers.add(a0, recs(a0, [1]), None)
    caught_up(buffers, a1, recs(a1, [2]))
    caught_up(buffers, b1, recs(b1, [1]))
    assert buffers.take(0, now_ms=0) == []  # partition 0 waits for b0
    assert stamps(buffers.take(1, now_ms=0)) == [1, 2]  # partition 1 has all it needs
    buffers.add(a1, recs(a1, [3], start=1), None)
    buffers.add(b1, [], 5)  # partition 1 now waits too, since 400
    assert buffers.take(1, now_ms=400) == []
    assert stamps(buffers.take(0, now_ms=IDLE)) == [1]
    assert buffers.take(1, now_ms=IDLE) == []
    assert stamps(buffers.take(1, now_ms=400 + IDLE)) == [3]


def test_same_topic_other_partition_does_not_count() -> None:
    a0, a1, b1 = (R, 0), (R, 1), (J, 1)
    buffers = make(a0, a1, b1)
    buffers.add(a0, recs(a0, [1, 2]), None)  # partition 0 has a single input topic
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2]
    assert buffers.buffered(a1) == 0 and buffers.buffered(b1) == 0


# --- assignment, bookkeeping ---------------------------------------------------------------


def test_assign_drops_the_buffers_of_unassigned_topic_partitions() -> None:
    a0, b0, a1 = (R, 0), (J, 0), (R, 1)
    buffers = make(a0, b0, a1)
    caught_up(buffers, a0, recs(a0, [1, 2]))
    caught_up(buffers, a1, recs(a1, [3]))
    buffers.assign([a0, b0])
    assert buffers.buffered(a1) == 0
    assert buffers.buffered(a0) == 2  # still assigned: kept
    assert buffers.take(1, now_ms=0) == []
    buffers.add(a1, recs(a1, [4], start=1), None)  # no longer assigned: ignored
    assert buffers.buffered(a1) == 0
    assert buffers.take(0, now_ms=0) == []  # b0 still unknown
    assert stamps(buffers.take(0, now_ms=IDLE)) == [1, 2]


def test_reassigned_topic_partition_starts_unknown() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, a, recs(a, [0]))
    caught_up(buffers, b, recs(b, [1]))
    assert stamps(buffers.take(0, now_ms=0)) == [0, 1]
    buffers.assign([a])
    buffers.assign([a, b])  # b is back: its end and fetched position are forgotten
    buffers.add(a, recs(a, [5], start=1), None)
    assert buffers.take(0, now_ms=10) == []
    assert stamps(buffers.take(0, now_ms=10 + IDLE)) == [5]


def test_assign_moves_topics_between_partitions() -> None:
    a0, b0, a1, b1 = (R, 0), (J, 0), (R, 1), (J, 1)
    buffers = make(a0, b0)
    buffers.assign([a1, b1])
    assert buffers.take(0, now_ms=0) == []
    caught_up(buffers, a1, recs(a1, [2]))
    caught_up(buffers, b1, recs(b1, [1]))
    assert stamps(buffers.take(1, now_ms=0)) == [1, 2]


def test_add_to_an_unassigned_topic_partition_is_ignored() -> None:
    buffers = make((R, 0))
    buffers.add((J, 0), recs((J, 0), [1]), 1)
    assert buffers.buffered((J, 0)) == 0
    assert not buffers.pending()


def test_drop_forgets_the_buffered_records() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, a, recs(a, [1, 2]))
    assert buffers.pending()
    buffers.drop(a)
    assert buffers.buffered(a) == 0
    assert not buffers.pending()
    buffers.add(a, recs(a, [3], start=2), None)  # dropped: ignored
    assert buffers.buffered(a) == 0
    buffers.drop(a)  # twice, or never assigned: harmless
    buffers.drop((M, 9))


def test_buffered_and_pending_count_what_waits() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    assert buffers.buffered(a) == 0 and buffers.buffered((M, 0)) == 0
    assert not buffers.pending()
    buffers.add(a, recs(a, [1, 2, 3]), None)
    buffers.add(b, [], None)
    assert buffers.buffered(a) == 3 and buffers.buffered(b) == 0
    assert buffers.pending()
    assert buffers.take(0, now_ms=0) == []
    assert buffers.buffered(a) == 3 and buffers.pending()
    assert len(buffers.take(0, now_ms=IDLE)) == 3
    assert buffers.buffered(a) == 0 and not buffers.pending()


def test_add_without_records_only_updates_the_end() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, b, recs(b, [1, 2]))
    buffers.add(b, [], None)  # an unknown end does not forget the last one seen
    caught_up(buffers, a, recs(a, [3]))
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2, 3]
    buffers.add(a, recs(a, [4], start=1), None)
    assert stamps(buffers.take(0, now_ms=0)) == [4]


# --- position and end from the consumer: bound(), unknown() -------------------------------


def test_unknown_lists_what_lacks_a_position_or_an_end() -> None:
    a, b, c = (R, 0), (J, 0), (M, 0)
    buffers = make(a, b, c)
    assert set(buffers.unknown()) == {a, b, c}
    caught_up(buffers, a, recs(a, [1]))  # records and an end: known
    buffers.add(b, [], 4)  # an end but no position yet
    assert set(buffers.unknown()) == {b, c}
    buffers.bound(b, 4, 4)
    buffers.add(c, recs(c, [1]), None)  # a position but no end yet
    assert buffers.unknown() == [c]
    buffers.bound((M, 5), 0, 0)  # not assigned: ignored
    assert buffers.unknown() == [c]
    buffers.assign([a, b])
    assert buffers.unknown() == []
    buffers.assign([a, b, c])  # back: known again only once told
    assert buffers.unknown() == [c]


def test_an_empty_topic_waits_until_its_position_is_known() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.add(b, [], 0)  # the end alone: the consumer's position is not known yet
    buffers.add(a, recs(a, [1]), None)
    assert buffers.take(0, now_ms=0) == []
    buffers.bound(b, 0, 0)  # position 0, end 0: nothing on the broker
    assert stamps(buffers.take(0, now_ms=1)) == [1]


def test_bound_caught_up_at_a_later_offset_does_not_block() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.bound(b, 120, 120)  # committed at the end: nothing left to fetch
    buffers.add(a, recs(a, [1, 2]), None)
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2]


def test_bound_behind_the_end_blocks_until_fetched() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.bound(b, 3, 5)  # offsets 3 and 4 still to fetch
    buffers.add(a, recs(a, [1, 9]), None)
    assert buffers.take(0, now_ms=0) == []
    buffers.add(b, recs(b, [2, 8], start=3), None)
    assert stamps(buffers.take(0, now_ms=1)) == [1, 2, 8, 9]


def test_bound_does_not_move_the_position_back_nor_the_end_down() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, b, recs(b, [1, 2, 3]))  # fetched up to 3, end 3
    buffers.bound(b, 1, 3)  # an older position: ignored
    caught_up(buffers, a, recs(a, [4]))
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2, 3, 4]
    buffers.bound(b, 3, 6)  # three more on the broker
    buffers.bound(b, 3, 3)  # an older, lower end (caught up): ignored
    buffers.add(a, recs(a, [5], start=1), None)
    assert buffers.take(0, now_ms=0) == []
    buffers.add(b, recs(b, [6, 7, 8], start=3), None)
    assert stamps(buffers.take(0, now_ms=1)) == [5, 6, 7, 8]


def test_a_record_fetched_again_does_not_move_the_position_back() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, b, recs(b, [1, 2, 3]))
    caught_up(buffers, a, recs(a, [4]))
    assert stamps(buffers.take(0, now_ms=0)) == [1, 2, 3, 4]
    buffers.add(b, recs(b, [2], start=1), None)  # offset 1 again (fetched 3 stays)
    assert stamps(buffers.take(0, now_ms=0)) == [2]
    buffers.add(a, recs(a, [5], start=1), None)
    assert stamps(buffers.take(0, now_ms=0)) == [5]  # b is still caught up


# --- reassignment and drop ----------------------------------------------------------------


def test_a_reassigned_partition_waits_afresh() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    buffers.add(a, recs(a, [1]), None)
    assert buffers.take(0, now_ms=0) == []  # waiting for b since 0
    buffers.assign([])  # revoked while waiting
    buffers.assign([a, b])  # and assigned again, much later
    buffers.add(a, recs(a, [1]), None)
    assert buffers.take(0, now_ms=10 * IDLE) == []  # b's end is unknown: wait


def test_take_after_drop_of_an_assigned_topic_partition() -> None:
    a, b = (R, 0), (J, 0)
    buffers = make(a, b)
    caught_up(buffers, a, recs(a, [1]))
    buffers.drop(b)
    assert stamps(buffers.take(0, now_ms=IDLE)) == [1]


# --- properties ----------------------------------------------------------------------------

TOPICS = (R, J, M)
timestamps = st.integers(min_value=0, max_value=50)


@st.composite
def partition_inputs(
    draw: st.DrawFn, min_size: int = 0, sorted_ts: bool = False
) -> dict[Tp, list[Rec]]:
    """One partition's topics (2 or 3), each with its records at consecutive offsets."""
    partition = draw(st.integers(min_value=0, max_value=3))
    n = draw(st.integers(min_value=2, max_value=3))
    out: dict[Tp, list[Rec]] = {}
    for topic in TOPICS[:n]:
        tp = (topic, partition)
        ts = draw(st.lists(timestamps, min_size=min_size, max_size=12))
        start = draw(st.integers(min_value=0, max_value=1000))
        out[tp] = recs(tp, sorted(ts) if sorted_ts else ts, start)
    return out


def chunks(draw: st.DrawFn, records: list[Rec]) -> list[list[Rec]]:
    """`records` cut at random places into consecutive chunks (empty ones included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(records)), max_size=4)))
    bounds = [0, *cuts, len(records)]
    return [records[i:j] for i, j in itertools.pairwise(bounds)]


def span(records: list[Rec]) -> tuple[int, int]:
    """A topic's consumer position before any fetch, and its end on the broker."""
    return (records[0].offset, records[-1].offset + 1) if records else (0, 0)


@settings(max_examples=300, deadline=None)
@given(partition_inputs(), st.booleans())
def test_property_caught_up_takes_everything(
    inputs: dict[Tp, list[Rec]], sorted_inputs: bool
) -> None:
    """Every topic fully buffered and caught up (an empty one told so by bound()): one take()
    returns everything, each topic in order, sorted when each input is sorted."""
    if sorted_inputs:
        inputs = {tp: recs(tp, sorted(stamps(rs)), span(rs)[0]) for tp, rs in inputs.items()}
    buffers = make(*inputs)
    for tp, rs in inputs.items():
        if rs:
            caught_up(buffers, tp, rs)
        else:
            buffers.bound(tp, *span(rs))
    assert buffers.unknown() == []
    partition = next(iter(inputs))[1]
    out = buffers.take(partition, now_ms=0)
    assert len(out) == sum(len(rs) for rs in inputs.values())
    for tp, rs in inputs.items():
        assert only(out, tp) == rs
    if sorted_inputs:
        assert stamps(out) == sorted(stamps(out))
    assert not buffers.pending()


@settings(max_examples=300, deadline=None)
@given(st.data(), partition_inputs(), st.integers(min_value=0, max_value=3 * IDLE))
def test_property_nothing_lost_or_duplicated_in_random_chunks(
    data: st.DataObject, inputs: dict[Tp, list[Rec]], idle: int
) -> None:
    """Random chunks, ends, positions and clock: every record comes out once, each topic in
    order."""
    buffers = make(*inputs, idle=idle)
    partition = next(iter(inputs))[1]
    steps = [(tp, chunk) for tp, rs in inputs.items() for chunk in chunks(data.draw, rs)]
    # Interleave the topics' chunks at random, each topic's chunks staying in order.
    order = data.draw(st.permutations(range(len(steps))))
    queues = {tp: [c for t, c in steps if t == tp] for tp in inputs}
    now, out = 0, list[Rec]()
    for tp in [steps[i][0] for i in order]:
        chunk = queues[tp].pop(0)
        end = data.draw(st.sampled_from([None, chunk[-1].offset + 1 if chunk else None]))
        buffers.add(tp, chunk, end)
        if data.draw(st.booleans()):
            buffers.bound(tp, *span(inputs[tp]))
        now += data.draw(st.integers(min_value=0, max_value=IDLE))
        if data.draw(st.booleans()):
            out += buffers.take(partition, now)
    # Then the clock runs past the idle limit: whatever still waits comes out.
    out += buffers.take(partition, now)
    out += buffers.take(partition, now + idle)
    assert not buffers.pending()
    assert len(out) == len(set(out)) == sum(len(rs) for rs in inputs.values())
    for tp, rs in inputs.items():
        assert only(out, tp) == rs


@settings(max_examples=300, deadline=None)
@given(st.data(), partition_inputs(sorted_ts=True))
def test_property_without_enforced_processing_the_merge_never_goes_back_in_time(
    data: st.DataObject, inputs: dict[Tp, list[Rec]]
) -> None:
    """Sorted topics, true positions and ends, the idle limit never reached: the whole output
    is sorted, and all of it comes out as soon as every record has been fetched."""
    buffers = make(*inputs, idle=10**9)
    partition = next(iter(inputs))[1]
    spans = {tp: span(rs) for tp, rs in inputs.items()}
    steps = [(tp, chunk) for tp, rs in inputs.items() for chunk in chunks(data.draw, rs)]
    order = data.draw(st.permutations(range(len(steps))))
    queues = {tp: [c for t, c in steps if t == tp] for tp in inputs}
    out: list[Rec] = []
    for now, i in enumerate(order):
        tp = steps[i][0]
        chunk = queues[tp].pop(0)
        buffers.add(tp, chunk, data.draw(st.sampled_from([None, spans[tp][1]])))
        if data.draw(st.booleans()):
            buffers.bound(tp, *spans[tp])
        if data.draw(st.booleans()):
            out += buffers.take(partition, now)
    for tp, (position, end) in spans.items():
        buffers.bound(tp, position, end)
        buffers.add(tp, [], end)
    out += buffers.take(partition, len(order))
    assert not buffers.pending()
    assert stamps(out) == sorted(stamps(out))
    for tp, rs in inputs.items():
        assert only(out, tp) == rs


# --- a bounded take ----------------------------------------------------------------------------


def test_a_limited_take_returns_the_head_of_the_merge_and_keeps_the_rest() -> None:
    buffers = make((R, 0), (J, 0))
    caught_up(buffers, (R, 0), recs((R, 0), [2, 4, 6]))
    caught_up(buffers, (J, 0), recs((J, 0), [1, 3, 5]))
    assert stamps(buffers.take(0, now_ms=0, limit=4)) == [1, 2, 3, 4]
    assert buffers.buffered((R, 0)) == 1 and buffers.buffered((J, 0)) == 1
    assert stamps(buffers.take(0, now_ms=0, limit=4)) == [5, 6]
    assert not buffers.pending()


def test_a_limited_take_of_a_single_topic_stops_at_the_limit() -> None:
    buffers = make((R, 0))
    caught_up(buffers, (R, 0), recs((R, 0), [5, 1, 3]))
    assert stamps(buffers.take(0, now_ms=0, limit=2)) == [5, 1]
    assert stamps(buffers.take(0, now_ms=0, limit=2)) == [3]


@settings(max_examples=300, deadline=None)
@given(partition_inputs(), st.integers(min_value=1, max_value=10))
def test_property_limited_takes_concatenate_to_one_unlimited_take(
    inputs: dict[Tp, list[Rec]], limit: int
) -> None:
    """Taking at most `limit` records at a time gives, batch after batch, exactly the
    records and the order of one unlimited take: the bound changes batch sizes, not order."""
    whole, cut = make(*inputs), make(*inputs)
    for buffers in (whole, cut):
        for tp, rs in inputs.items():
            if rs:
                caught_up(buffers, tp, rs)
            else:
                buffers.bound(tp, *span(rs))
    partition = next(iter(inputs))[1]
    expected = whole.take(partition, now_ms=0)
    out: list[Rec] = []
    while batch := cut.take(partition, now_ms=0, limit=limit):
        assert len(batch) <= limit
        out += batch
    assert out == expected
    assert not cut.pending()
