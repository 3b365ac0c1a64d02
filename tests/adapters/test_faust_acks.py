"""The faust engine's consumer commits only what its agents folded, and has them fold each
partition in order; its producer's flush waits for every buffered write (no broker: the
offsets it would commit are computed from its ack bookkeeping, the log is looked at and
seeked through stand-ins, which is what these tests drive)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from faust.transport.drivers.aiokafka import Consumer, Producer
from faust.types import TP, ConsumerMessage

from receipt_streams.adapters.faust_engine import acks
from receipt_streams.adapters.faust_engine.acks import FoldConsumer, Processed
from receipt_streams.adapters.faust_engine.app import create_app
from receipt_streams.adapters.faust_engine.producer import DurableProducer
from tests.support.worker import worker_settings

TOPIC = "in.client"
T = TypeVar("T")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        s = worker_settings("127.0.0.1:9", tmp_path, engine="faust", topic_client=TOPIC)
        yield create_app(s)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def consumer(app: Any) -> FoldConsumer:
    c = app.consumer
    assert isinstance(c, FoldConsumer)
    return c


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.get_event_loop().run_until_complete(coro)


def message(offset: int, partition: int = 0) -> ConsumerMessage:
    return ConsumerMessage(TOPIC, partition, offset, 0.0, 0, None, b"k", b"v", None)


def test_streams_ack_through_the_consumer(consumer: FoldConsumer) -> None:
    """Faust's Cython stream iterator would append acked offsets itself, past `ack()`."""
    import faust.streams

    assert faust.streams._CStreamIterator is None


def test_an_event_faust_skipped_is_released_but_not_committable(consumer: FoldConsumer) -> None:
    m = message(5)
    consumer._unacked_messages.add(m)
    assert consumer.ack(m) is False
    assert m.acked and m not in consumer._unacked_messages  # nothing waits for it
    assert not consumer._acked.get(m.tp)


def test_processed_marks_only_guarded_topics() -> None:
    p = Processed()
    p.guard(TOPIC)
    assert p.guarded(TOPIC) and not p.guarded("other")


def test_no_commit_past_an_unprocessed_head(consumer: FoldConsumer) -> None:
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [11, 12]  # Faust alone would commit 13, skipping record 10
    assert consumer._new_offset(tp) is None
    assert consumer._stalls[tp][0] == 10


def test_no_commit_while_the_committed_offset_is_unknown(consumer: FoldConsumer) -> None:
    """Between a revocation and the seek after it, Faust commits whatever was acked."""
    tp = TP(TOPIC, 0)
    consumer._acked[tp] = [342, 343]
    assert consumer._new_offset(tp) is None


def test_commits_up_to_the_first_hole(consumer: FoldConsumer) -> None:
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [10, 11, 13]
    assert consumer._new_offset(tp) == 12
    assert tp not in consumer._stalls


def test_a_verified_gap_is_committed_over(consumer: FoldConsumer) -> None:
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    consumer._gap[tp].addi(10, 11)  # what _repair adds when offset 10 holds no record
    consumer._acked[tp] = [11, 12]
    assert consumer._new_offset(tp) == 13


def test_unverified_fetch_gaps_are_ignored(consumer: FoldConsumer) -> None:
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    asyncio.get_event_loop().run_until_complete(consumer._add_gap(tp, 11, 20))
    assert not consumer._gap.get(tp)


# --- order -------------------------------------------------------------------------------


class Log:
    """Stand-ins for the broker: the first record at or after an offset (`records`: the
    offsets that hold one), and the seeks made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, consumer: FoldConsumer) -> None:
        self.records: list[int] = list(range(100))
        self.lookups = 0
        self.seeks: list[dict[TP, int]] = []

        async def first_offset_from(bootstrap: str, tp: TP, offset: int) -> int | None:
            self.lookups += 1
            return next((o for o in self.records if o >= offset), None)

        async def seek_wait(partitions: dict[TP, int]) -> None:
            self.seeks.append(dict(partitions))

        monkeypatch.setattr(acks, "first_offset_from", first_offset_from)
        monkeypatch.setattr(consumer, "seek_wait", seek_wait)
        monkeypatch.setattr(consumer, "assignment", lambda: {TP(TOPIC, 0)})


def fold(consumer: FoldConsumer, *offsets: int) -> list[int]:
    """Offer records to `admit()` as an agent does; the offsets it let through (folded)."""
    folded = []
    for offset in offsets:
        m = message(offset)
        if run(consumer.admit(m)):
            consumer.done(m)
            folded.append(offset)
    return folded


def test_a_partition_is_folded_in_order_from_its_committed_offset(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Log(monkeypatch, consumer)
    consumer._committed_offset[TP(TOPIC, 0)] = 10
    assert fold(consumer, 10, 11, 12) == [10, 11, 12]
    assert consumer._next[TP(TOPIC, 0)] == 13


def test_a_record_folded_already_is_done_without_folding_again(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Log(monkeypatch, consumer)
    consumer._committed_offset[TP(TOPIC, 0)] = 10
    assert fold(consumer, 10, 11) == [10, 11]
    again = message(10)  # read again after a seek back
    assert run(consumer.admit(again)) is False
    assert again in consumer.processed.messages  # committable: it was folded


def test_a_record_after_a_dropped_one_waits_and_the_partition_is_read_again(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust dropped 11 and delivers 12: 12 is not folded before 11, 11 is read again."""
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    ahead = message(12)
    assert fold(consumer, 10) == [10]
    assert run(consumer.admit(ahead)) is False
    assert ahead not in consumer.processed.messages  # not committable
    assert log.seeks == [{tp: 11}]
    assert fold(consumer, 13, 14) == []  # the rest of what was fetched before: one look
    assert log.lookups == 1 and log.seeks == [{tp: 11}]
    assert fold(consumer, 11, 12, 13) == [11, 12, 13]


def test_a_log_that_cannot_be_read_is_looked_at_again_by_the_repair_task_only(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    log.records = []  # the broker is away: no answer
    assert fold(consumer, 12, 13, 14) == []
    assert log.lookups == 1  # not once per record fetched
    log.records = list(range(100))  # back
    consumer._unsure[tp] -= acks.STALL_S
    run(consumer._repair_once())
    assert log.seeks == [{tp: 10}]
    assert fold(consumer, 10, 11) == [10, 11]


def test_a_partition_revoked_meanwhile_is_not_seeked(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log(monkeypatch, consumer)
    monkeypatch.setattr(consumer, "assignment", lambda: set())
    run(consumer.rewind(TP(TOPIC, 0), 11))
    assert not log.seeks and not consumer._rewinds


def test_offsets_without_records_are_folded_over_and_committed_over(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log(monkeypatch, consumer)
    log.records = [10, 13, 14]  # 11 and 12: transaction markers
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    assert fold(consumer, 10, 13, 14) == [10, 13, 14]
    assert not log.seeks
    consumer._acked[tp] = [10, 13, 14]
    assert consumer._new_offset(tp) == 15


def test_an_uncommitted_partition_is_folded_from_the_start_of_its_log(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log(monkeypatch, consumer)
    log.records = list(range(40, 100))  # the log starts at 40 (older records deleted)
    assert fold(consumer, 40, 41) == [40, 41]
    assert not log.seeks


def test_a_fold_begun_before_a_seek_does_not_move_the_partition_on(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    assert fold(consumer, 10, 11) == [10, 11]
    m = message(12)
    assert run(consumer.admit(m))

    async def seek_to_committed() -> dict[TP, int]:
        return {tp: 11}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    run(consumer.perform_seek())  # a rebalance while 12 was being folded
    consumer.done(m)
    assert consumer._next[tp] == 11  # from the committed offset again
    assert fold(consumer, 11, 12) == [11, 12]


def test_what_was_fetched_before_a_seek_back_is_dropped_until_the_record_comes_again(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    fetched = [message(o) for o in (20, 21, 11, 12)]  # 20, 21: fetched before the seek

    async def getmany(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for m in fetched:
            yield m.tp, m

    async def delivered() -> list[int]:
        return [m.offset async for _, m in consumer.getmany(1.0)]

    monkeypatch.setattr(Consumer, "getmany", getmany)
    consumer._read_offset[tp] = 21  # where faust's own filter would drop 11 and 12
    run(consumer.rewind(tp, 11))
    assert run(delivered()) == [11, 12]
    assert consumer._read_offset[tp] is None
    assert tp not in consumer._rewinds


def test_a_seek_below_zero_goes_to_the_start_of_the_log(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's recovery asked for an offset below -1 around a broker restart; aiokafka
    refuses negative offsets, and the worker crashed."""
    seeks: list[dict[TP, int]] = []

    async def seek_wait(self: Consumer, partitions: dict[TP, int]) -> None:
        seeks.append(dict(partitions))

    monkeypatch.setattr(Consumer, "seek_wait", seek_wait)
    a, b, c = (TP("x-changelog", p) for p in range(3))
    run(consumer.seek_wait({a: -2, b: -1, c: 7}))
    assert seeks == [{a: 0, b: 0, c: 7}]


class Fetch:
    """Faust's fetch loop handing on only the first `handed` records of a fetched batch
    (the consumer generation changed meanwhile: it gives up the rest)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, offsets: list[int], handed: int):
        tp = TP(TOPIC, 0)
        batch = {tp: [message(o) for o in offsets]}

        async def wait_next_records(self: Consumer, timeout: float) -> Any:
            return batch, {tp}

        async def getmany(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
            records, _ = await self._wait_next_records(timeout)
            for m in records[tp][:handed]:
                yield tp, m

        monkeypatch.setattr(Consumer, "_wait_next_records", wait_next_records)
        monkeypatch.setattr(Consumer, "getmany", getmany)

    @staticmethod
    def deliver(consumer: FoldConsumer) -> list[int]:
        async def delivered() -> list[int]:
            return [m.offset async for _, m in consumer.getmany(1.0)]

        return run(delivered())


def test_records_faust_dropped_from_a_fetched_batch_are_read_again(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last records of a partition: no later record would show they are missing."""
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    assert fold(consumer, 10) == [10]
    Fetch(monkeypatch, [11, 12, 13], handed=1)
    assert Fetch.deliver(consumer) == [11]
    assert fold(consumer, 11) == [11]
    run(consumer._repair_once())
    assert log.seeks == [{tp: 12}]
    assert fold(consumer, 12, 13) == [12, 13]


def test_records_dropped_before_a_seek_to_the_committed_offset_are_left_to_it(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    Fetch(monkeypatch, [10, 11, 12], handed=1)
    assert Fetch.deliver(consumer) == [10]

    async def seek_to_committed() -> dict[TP, int]:
        return {tp: 10}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    run(consumer.perform_seek())  # the rebalance's seek: 10 on is read again
    run(consumer._repair_once())
    assert not log.seeks


def test_a_record_fetched_before_the_seek_after_an_assignment_waits_for_that_seek(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between an assignment and Faust's seek the committed offset is unknown: a record
    fetched then is not taken for one after the log's start (a seek back to offset 0 would
    read the whole partition again); it comes again after the seek."""
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._seeking[tp] = 0.0  # as `on_partitions_assigned` leaves it
    early = message(47)
    assert run(consumer.admit(early)) is False
    assert early not in consumer.processed.messages  # not committable
    assert not log.seeks and not log.lookups

    async def seek_to_committed() -> dict[TP, int]:
        return {tp: 47}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    run(consumer.perform_seek())
    assert fold(consumer, 47, 48) == [47, 48]
    assert not log.seeks  # faust's own seek to 47 (stubbed here) is the one


def test_a_partition_with_nothing_committed_is_read_from_its_start_after_that_seek(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust seeks only partitions with a committed offset past 0: the records let go
    before the seek of one just assigned with none must be read again from its log's start."""
    log = Log(monkeypatch, consumer)
    tp = TP(TOPIC, 0)
    consumer._seeking[tp] = 0.0
    assert fold(consumer, 0, 1) == []

    async def seek_to_committed() -> dict[TP, int | None]:
        return {tp: None}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    run(consumer.perform_seek())
    assert log.seeks == [{tp: 0}]
    assert fold(consumer, 0, 1) == [0, 1]


class Idle:
    """A partition with records to fold (its log ends at `end`) and a clock to move."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, consumer: FoldConsumer, end: int):
        self.log = Log(monkeypatch, consumer)
        self.now = 1000.0
        self.end = end

        async def highwaters(*tps: TP) -> dict[TP, int]:
            return {tp: self.end for tp in tps}

        monkeypatch.setattr(consumer, "highwaters", highwaters)
        monkeypatch.setattr(acks.time, "monotonic", lambda: self.now)

    def watch(self, consumer: FoldConsumer, after_s: float) -> None:
        self.now += after_s
        run(consumer._watch_progress(self.now))


def test_a_partition_with_records_that_makes_no_progress_is_read_again(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever held it (here: left out of the fetch by flow control), it is fetched again
    and read from its committed offset, once it made no progress for `WATCH_S`."""
    idle = Idle(monkeypatch, consumer, end=60)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 50
    assert fold(consumer, 50, 51) == [50, 51]
    consumer.on_buffer_full(tp)  # out of the fetch, never let back in
    assert tp not in consumer._get_active_partitions()
    idle.watch(consumer, 0)
    idle.watch(consumer, acks.WATCH_S - 1)
    assert not idle.log.seeks
    idle.watch(consumer, 1)
    assert idle.log.seeks == [{tp: 50}]
    assert tp in consumer._get_active_partitions()
    assert fold(consumer, 50, 51, 52) == [52]  # 50, 51 were folded: done, not again


def test_a_partition_that_folds_or_is_at_its_end_is_left_alone(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    idle = Idle(monkeypatch, consumer, end=60)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 50
    for offset in range(50, 50 + int(acks.WATCH_S)):  # one record a second
        assert fold(consumer, offset) == [offset]
        idle.watch(consumer, 1)
    consumer._committed_offset[tp] = idle.end = 60  # all folded and committed
    idle.watch(consumer, 0)
    idle.watch(consumer, 2 * acks.WATCH_S)
    assert not idle.log.seeks and not idle.log.lookups


def test_a_partition_whose_records_are_fetched_but_wait_in_the_queue_is_left_alone(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy agent: records come for the partition but wait behind other partitions'."""
    idle = Idle(monkeypatch, consumer, end=60)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 50
    for _ in range(3 * int(acks.WATCH_S)):
        consumer._fetched[tp] = consumer._fetched.get(tp, 0) + 1
        idle.watch(consumer, 1)
    assert not idle.log.seeks


def test_an_assignment_no_seek_followed_is_seeked_to_the_committed_offsets(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    idle = Idle(monkeypatch, consumer, end=60)
    tp = TP(TOPIC, 0)
    consumer._seeking[tp] = idle.now

    async def seek_to_committed() -> dict[TP, int]:
        return {tp: 50}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    idle.watch(consumer, acks.WATCH_S - 1)
    assert tp in consumer._seeking
    idle.watch(consumer, 1)
    assert tp not in consumer._seeking
    assert fold(consumer, 50) == [50]


def test_a_record_seeked_back_to_is_waited_for_longer_each_time_it_does_not_come(
    consumer: FoldConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each seek drops what was fetched: seeking again before a busy fetch loop took the
    batch would never let the record through. A commit stalled on it does not seek too."""
    clock = Idle(monkeypatch, consumer, end=10)  # at its end: the last resort stays out
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 10
    consumer._next[tp] = 10
    consumer._stalls[tp] = (10, clock.now - acks.STALL_S)  # the commit waits for 10, too
    run(consumer.rewind(tp, 10))
    seeks = []
    for _ in range(60):  # a minute, looked at every second
        clock.now += 1
        run(consumer._repair_once())
        seeks.append(len(clock.log.seeks))
    gaps = [b - a for a, b in itertools.pairwise(seeks)]
    times = [i for i, g in enumerate(gaps, 1) if g]
    assert [b - a for a, b in itertools.pairwise(times)] == [8, 16, 30]  # 4 s, doubled, capped
    assert max(gaps) == 1  # one seek at a time, the stall repair adds none


# --- flush -------------------------------------------------------------------------------


def test_flush_waits_for_every_write_put_in_the_buffer_before_it(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = app.producer
    assert isinstance(producer, DurableProducer)
    flushed: list[str] = []

    async def gives_up() -> None:  # Faust's buffer flush, when a hand-over takes > 0.1 s
        flushed.append("buffer")

    async def aiokafka_flush(self: Producer) -> None:
        flushed.append("aiokafka")

    monkeypatch.setattr(producer.buffer, "flush", gives_up)
    monkeypatch.setattr(Producer, "flush", aiokafka_flush)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        write: asyncio.Future[Any] = loop.create_future()
        producer.unsent.add(write)  # type: ignore[arg-type]
        write.add_done_callback(producer.unsent.discard)
        flush = asyncio.ensure_future(producer.flush())
        await asyncio.sleep(0.05)
        assert not flush.done()
        later: asyncio.Future[Any] = loop.create_future()
        producer.unsent.add(later)  # type: ignore[arg-type]  # after the flush began
        write.set_result(None)  # acknowledged by the broker
        await asyncio.wait_for(flush, timeout=1)
        assert flushed == ["buffer", "aiokafka"]
        later.cancel()

    run(scenario())
