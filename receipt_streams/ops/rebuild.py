"""`ctl rebuild` and `ctl diff`.

`rebuild --local DATA_DIR` wipes a stopped worker's stores: at its next start it restores
them from the changelogs. `rebuild --into APP_ID2` builds a second app version from the same
inputs into changelogs of its own (`APP_ID2-*`), by running a `receipt-streams worker` with
that app id, its own data directory and its own output topics (nothing reaches the live
sync, EDU or DLQ consumers), until its fold group has committed up to the inputs' ends.
`diff APP_ID1 APP_ID2` then compares the two receipts tables key by key.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

from receipt_streams.bench.process import free_port
from receipt_streams.config import Settings
from receipt_streams.ops import kafka
from receipt_streams.ops.groups import reset_inputs
from receipt_streams.ops.output import CtlError, progress


def diff_tables(left: dict[bytes, bytes], right: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """Keys whose last values differ (compared as JSON, so byte layout does not matter)."""
    out = []
    for key in sorted(set(left) | set(right)):
        a = orjson.loads(left[key]) if key in left else None
        b = orjson.loads(right[key]) if key in right else None
        if a != b:
            out.append({"key": orjson.loads(key), "left": a, "right": b})
    return out


async def diff(s: Settings, app1: str, app2: str, quiet: bool = False) -> dict[str, Any]:
    tables = []
    for app in (app1, app2):
        topic = s.model_copy(update={"app_id": app}).changelog_receipts
        tables.append(await kafka.read_table(s, topic, quiet))
    differences = diff_tables(*tables)
    return {
        "left": app1,
        "right": app2,
        "left_keys": len(tables[0]),
        "right_keys": len(tables[1]),
        "differences": differences,
    }


def render_diff(d: dict[str, Any]) -> str:
    head = (
        f"{d['left']}: {d['left_keys']} receipts, {d['right']}: {d['right_keys']} receipts; "
        f"{len(d['differences'])} key(s) differ"
    )
    lines = [head]
    for x in d["differences"]:
        lines.append(f"  {orjson.dumps(x['key']).decode()}")
        lines.append(f"    {d['left']}: {orjson.dumps(x['left']).decode()}")
        lines.append(f"    {d['right']}: {orjson.dumps(x['right']).decode()}")
    if not d["differences"]:
        lines.append("the tables are equal")
    return "\n".join(lines)


# --- a second app version ---------------------------------------------------------------


def rebuild_settings(s: Settings, app2: str, data_dir: Path, web_port: int) -> Settings:
    """The same inputs; everything written goes to topics of `app2`'s own."""
    return s.model_copy(
        update={
            "app_id": app2,
            "data_dir": data_dir,
            "web_port": web_port,
            "web_host": "127.0.0.1",
            "admin_port": free_port(),  # beside the live worker on the same machine
            "topic_sync": f"{app2}-sync",
            "topic_edus": f"{app2}-edus",
            "topic_dlq": f"{app2}-dlq",
            "topic_ticks": f"{app2}-ticks",
            "topic_read_positions": f"{app2}-read-positions",
            "topic_history": f"{app2}-history",
            "serve_api": False,
            "run_relays": False,
            "create_topics": True,
        }
    )


def child_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIPT_STREAMS_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    for name, value in s.model_dump().items():
        if value is not None:
            env[f"RECEIPT_STREAMS_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env


def caught_up(
    committed: dict[TopicPartition, int], targets: dict[TopicPartition, int]
) -> tuple[int, int]:
    """(records folded, records to fold) towards `targets`."""
    done = sum(min(committed.get(tp, 0), end) for tp, end in targets.items())
    return done, sum(targets.values())


async def rebuild_into(
    s: Settings, app2: str, data_dir: Path, timeout_s: float, quiet: bool = False
) -> dict[str, Any]:
    if app2 == s.app_id:
        raise CtlError(f"--into {app2} is the live app id", "choose a new app id, e.g. {app_id}-v2")
    s2 = rebuild_settings(s, app2, data_dir, free_port())
    async with kafka.started(kafka.consumer(s)) as c:
        inputs = await kafka.topic_partitions(c, reset_inputs(s))
        targets = await c.end_offsets(inputs)
    existing = (await kafka.describe_groups(s, [app2]))[app2]
    if existing.members:
        raise CtlError(
            f"group {app2!r} has live members", "stop the rebuild already running, or pick a new id"
        )
    log_path = data_dir.parent / f"{data_dir.name}.log"
    proc = _start_worker(s2, data_dir, log_path)
    t0 = time.monotonic()
    try:
        await _wait_folded(s2, proc, targets, timeout_s, log_path, quiet)
    finally:
        _stop(proc)
    return {
        "app_id": app2,
        "data_dir": str(data_dir),
        "log": str(log_path),
        "changelog": s2.changelog_receipts,
        "records": sum(targets.values()),
        "seconds": round(time.monotonic() - t0, 1),
    }


async def _wait_folded(
    s2: Settings,
    proc: subprocess.Popen[bytes],
    targets: dict[TopicPartition, int],
    timeout_s: float,
    log_path: Path,
    quiet: bool,
) -> None:
    """Until the new fold has committed the inputs up to their ends seen at the start, and
    its own federation-in topic up to its end (the EDUs it split)."""
    deadline = time.monotonic() + timeout_s
    bar = progress(sum(targets.values()), f"folding into {s2.app_id}", quiet)
    try:
        while True:
            if proc.poll() is not None:
                raise CtlError(
                    f"the rebuild worker exited with {proc.returncode}",
                    f"see its log: {log_path}",
                )
            committed = (await kafka.describe_groups(s2, [s2.app_id]))[s2.app_id].committed
            done, total = caught_up(committed, targets)
            bar.n = done
            bar.refresh()
            if await _inputs_done(s2, committed, targets) and await _internal_done(s2, committed):
                return
            if time.monotonic() > deadline:
                raise CtlError(
                    f"the rebuild did not catch up in {timeout_s:g} s ({done}/{total})",
                    f"pass a longer --timeout; its log is {log_path}",
                )
            await asyncio.sleep(0.5)
    finally:
        bar.close()


async def _inputs_done(
    s2: Settings, committed: dict[TopicPartition, int], targets: dict[TopicPartition, int]
) -> bool:
    async with kafka.started(kafka.consumer(s2)) as c:
        return not await kafka.records_between(c, committed, targets)


async def _internal_done(s2: Settings, committed: dict[TopicPartition, int]) -> bool:
    async with kafka.started(kafka.consumer(s2)) as c:
        tps = await kafka.topic_partitions(c, [s2.topic_federation_in])
        ends = await c.end_offsets(tps)
        return not await kafka.records_between(c, committed, ends)


def _start_worker(s2: Settings, data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "receipt_streams.entrypoints.cli", "worker"],
            env=child_env(s2),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
