"""The latency bench's accounting: where a receipt's time went, and what the load cost."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import orjson

from receipt_streams.bench.process import cpu_seconds, machine_busy_seconds, machine_steal_seconds
from receipt_streams.bench.scenarios import _cpu_used, _latency_stages


class Rec(NamedTuple):
    key: bytes
    value: bytes | None
    timestamp: int


def _changelog(room: str, user: str, event: str, at: int) -> Rec:
    key = orjson.dumps([room, user, "m.read", None])
    return Rec(key, orjson.dumps({"event_id": event, "stream_pos": 1, "ts": 1, "data": {}}), at)


def test_stages_split_a_receipts_time_by_the_records_timestamps() -> None:
    a, b = ("!r", "@a", "$1"), ("!r", "@b", "$1")
    sent = {a: 1000.0, b: 1000.0}
    accepted = {a: 1002, b: 1010}
    changelog: list[Any] = [
        _changelog("!r", "@a", "$1", 1030),
        _changelog("!r", "@a", "$1", 1090),  # a later write of the same receipt: the first counts
        Rec(orjson.dumps(["!r", "@b", "m.read", None]), None, 1040),  # a tombstone: skipped
        _changelog("!r", "@b", "$1", 1050),
    ]
    seen = {a: 1040.0, b: 1070.0}
    stages = _latency_stages(sent, accepted, changelog, seen)
    assert stages["stage_api_p99_ms"] == 10
    assert stages["stage_fold_p50_ms"] == 28 and stages["stage_fold_p99_ms"] == 40
    assert stages["stage_visible_p50_ms"] == 10 and stages["stage_visible_p99_ms"] == 20


def test_cpu_used_is_per_second_of_the_load() -> None:
    before = {"worker": 1.0, "machine": 10.0, "wall": 100.0}
    after = {"worker": 3.0, "machine": 26.0, "wall": 110.0}
    assert _cpu_used(before, after) == {"cpu_worker": 0.2, "cpu_machine": 1.6}


def test_cpu_seconds_of_this_process_and_the_machine() -> None:
    mine = cpu_seconds(os.getpid())
    sum(range(2_000_000))
    assert cpu_seconds(os.getpid()) > mine
    busy, total = machine_busy_seconds()
    assert 0 < busy <= total
    assert 0 <= machine_steal_seconds() <= busy  # steal is counted in busy


def test_free_port_never_hands_out_a_port_twice() -> None:
    from receipt_streams.bench.process import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(20_000 <= p < 32_000 for p in ports)
