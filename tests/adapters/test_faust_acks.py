"""The faust engine's consumer commits only what its agents folded (no broker: the offsets it
would commit are computed from its ack bookkeeping, which is what these tests drive)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from faust.types import TP, ConsumerMessage

from receipt_streams.adapters.faust_engine.acks import FoldConsumer, Processed
from receipt_streams.adapters.faust_engine.app import create_app
from tests.support.worker import worker_settings

TOPIC = "in.client"


@pytest.fixture
def consumer(tmp_path: Path) -> Iterator[FoldConsumer]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        s = worker_settings("127.0.0.1:9", tmp_path, engine="faust", topic_client=TOPIC)
        c = create_app(s).consumer
        assert isinstance(c, FoldConsumer)
        yield c
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def message(offset: int, partition: int = 0) -> ConsumerMessage:
    return ConsumerMessage(TOPIC, partition, offset, 0.0, 0, None, b"k", b"v", None)


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
