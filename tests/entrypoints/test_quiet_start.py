"""A healthy first start on a fresh broker logs no ERROR line (issue 13, "Quiet logs"): the
transient aiokafka complaints of a cluster that is still creating topics and electing a group
coordinator are expected there, and an operator who sees ERROR should have something to fix."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from receipt_streams.logs import TransientKafkaErrors, logging_config
from tests.support.scenario import Room
from tests.support.worker import TopicReader, WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

# The text format of receipt_streams.logs: "[time] LEVEL logger: message".
LEVEL = re.compile(r"^\[[^\]]+\] (?P<level>[A-Z]+) ")


async def test_first_start_on_fresh_topics_logs_no_error(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    s = worker_settings(kafka_bootstrap, tmp_path)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        room = Room(s, "!quiet:hs1")
        await produce(
            kafka_bootstrap,
            [
                room.member("@a:hs1"),
                room.event("$e1"),
                room.receipt("@a:hs1", "m.read", "$e1", 1_700_000_000_000),
            ],
        )
        async with TopicReader(kafka_bootstrap, s.changelog_receipts) as changelog:
            await changelog.wait_for(
                lambda r: any(m.value and orjson.loads(m.value)["event_id"] == "$e1" for m in r),
                timeout=60,
                what="the folded receipt",
            )
    finally:
        assert worker.stop() == 0, worker.tail()
    lines = worker.log_path.read_text(errors="replace").splitlines()
    levels = [m["level"] for m in map(LEVEL.match, lines) if m]
    assert levels, f"no log line in the text format:\n{worker.tail()}"
    errors = [
        line for line in lines if (m := LEVEL.match(line)) and m["level"] in ("ERROR", "CRITICAL")
    ]
    assert not errors, "\n".join(errors)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.fixture
def aiokafka_at_warning() -> Iterator[None]:
    logger = logging.getLogger("aiokafka")
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(before)


def test_transient_complaint_is_hidden_until_it_lasts(aiokafka_at_warning: None) -> None:
    clock = _Clock()
    f = TransientKafkaErrors(tolerate_s=60, clock=clock)
    msg = "Topic %s not found in cluster metadata"
    first = _record("aiokafka.cluster", logging.ERROR, msg, "rooms.events.v1")
    assert not f.filter(first)  # INFO under aiokafka's WARNING level: not printed
    assert first.levelname == "INFO"
    clock.now += 30
    assert not f.filter(_record("aiokafka.cluster", logging.ERROR, msg, "rooms.events.v1"))
    clock.now += 31  # the same complaint for 61 s: a real problem, shown as ERROR
    late = _record("aiokafka.cluster", logging.ERROR, msg, "rooms.events.v1")
    assert f.filter(late) and late.levelname == "ERROR"
    clock.now += 120  # quiet for longer than the tolerance: a new streak
    assert not f.filter(_record("aiokafka.cluster", logging.ERROR, msg, "rooms.events.v1"))


def test_other_errors_keep_their_level(aiokafka_at_warning: None) -> None:
    f = TransientKafkaErrors(clock=_Clock())
    auth = _record("aiokafka.cluster", logging.ERROR, "Topic %s is not authorized for this client")
    ours = _record("receipt_streams.x", logging.ERROR, "Topic %s not found in cluster metadata")
    assert f.filter(auth) and auth.levelname == "ERROR"
    assert f.filter(ours) and ours.levelname == "ERROR"


def test_the_worker_logging_config_installs_the_filter() -> None:
    config = logging_config("INFO", json=False)
    handler = config["handlers"]["stderr"]
    assert handler["filters"] == ["transient_kafka"]
    assert config["filters"]["transient_kafka"]["()"] is TransientKafkaErrors
