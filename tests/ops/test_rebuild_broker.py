"""`ctl rebuild --into` folds the same inputs into a second app's changelogs; `ctl diff` finds
them equal on a deterministic replay, and names the key that differs when one app got more."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.ops.support import Ctl, table, wait_until
from tests.support.scenario import Room
from tests.support.worker import WorkerProcess, produce, worker_settings

pytestmark = pytest.mark.broker

A, B = "@a:hs1", "@b:hs1"


def test_rebuild_into_a_second_app_then_diff(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ctl = Ctl(monkeypatch, capsys)
    s = worker_settings(kafka_bootstrap, tmp_path)
    room = Room(s, "!rebuild:hs1")
    records = [room.member(A), room.member(B), *(room.event(f"$e{i}") for i in range(1, 4))]
    records += [
        room.receipt(A, "m.read", "$e2", 1),
        room.receipt(B, "m.read", "$e1", 2),
        room.receipt(B, "m.read", "$e3", 3, thread_id="main"),
    ]
    w = WorkerProcess(s, tmp_path / "worker.log")
    app2 = f"{s.app_id}-v2"
    try:
        w.start().wait_ready()
        asyncio.run(produce(kafka_bootstrap, records))
        wait_until(lambda: len(table(s)) == 3, "3 receipts")
        code, built = ctl(
            s,
            "rebuild",
            "--into",
            app2,
            "--data-dir",
            str(tmp_path / "v2"),
            "--diff",
            "--timeout",
            "60",
        )
        assert code == 0, built
        assert built["diff"]["differences"] == [] and built["diff"]["right_keys"] == 3

        # Only the live app folds this one: the diff must name its key.
        asyncio.run(produce(kafka_bootstrap, [room.receipt(A, "m.read", "$e3", 4)]))
        wait_until(lambda: table(s)[(room.room_id, A, "m.read", None)]["event_id"] == "$e3", "$e3")
        code, d = ctl(s, "diff", s.app_id, app2)
        assert code == 1
        assert [x["key"] for x in d["differences"]] == [[room.room_id, A, "m.read", None]]
        assert d["differences"][0]["left"]["event_id"] == "$e3"
        assert d["differences"][0]["right"]["event_id"] == "$e2"
        code, text = ctl(s, "diff", s.app_id, app2, as_json=False)
        assert "1 key(s) differ" in text and A in text
    finally:
        w.stop()
