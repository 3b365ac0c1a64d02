"""`ctl status`: the app's consumer groups, their members and assignments, the lag of every
partition, and each worker's /readyz."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson
from aiokafka import TopicPartition

from receipt_streams.config import Settings
from receipt_streams.ops import kafka
from receipt_streams.ops.groups import app_groups, fold_group
from receipt_streams.ops.output import table


def lag_rows(
    topics: list[str],
    committed: dict[TopicPartition, int],
    begin: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
    owners: dict[TopicPartition, str],
) -> list[dict[str, Any]]:
    """Per partition: committed offset (None: nothing committed, the group starts at the
    beginning), end offset and lag."""
    rows = []
    for tp in sorted(t for t in end if t.topic in topics):
        done = committed.get(tp)
        lag = end[tp] - (done if done is not None else begin[tp])
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": done,
                "end": end[tp],
                "lag": max(0, lag),
                "owner": owners.get(tp),
            }
        )
    return rows


def worker_urls(s: Settings, explicit: list[str], hosts: list[str]) -> list[str]:
    """--worker URLs, else one per fold member's host on RECEIPT_STREAMS_WEB_PORT."""
    if explicit:
        return [u.rstrip("/") for u in explicit]
    return [f"http://{h}:{s.web_port}" for h in sorted(set(hosts))]


def _readyz(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=3) as resp:
            return {"url": url, "ready": True, "status": resp.status, **_body(resp.read())}
    except urllib.error.HTTPError as exc:
        return {"url": url, "ready": False, "status": exc.code, **_body(exc.read())}
    except OSError as exc:
        return {"url": url, "ready": False, "status": None, "error": str(exc)}


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return {"detail": body} if isinstance(body, dict) else {}


async def gather_status(s: Settings, workers: list[str]) -> dict[str, Any]:
    wanted = app_groups(s)
    groups = await kafka.describe_groups(s, list(wanted))
    async with kafka.started(kafka.consumer(s)) as c:
        tps = [
            TopicPartition(t, p)
            for topics in wanted.values()
            for t in topics
            for p in await kafka.partitions(c, t, required=False)
        ]
        begin = await c.beginning_offsets(tps) if tps else {}
        end = await c.end_offsets(tps) if tps else {}
    out: dict[str, Any] = {"app_id": s.app_id, "groups": []}
    for group_id, topics in wanted.items():
        g = groups[group_id]
        owners = {tp: f"{m.client_id}@{m.host}" for m in g.members for tp in m.assignment}
        rows = lag_rows(topics, g.committed, begin, end, owners)
        out["groups"].append(
            {
                "group": group_id,
                "state": g.state,
                "members": [
                    {
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "host": m.host,
                        "assignment": [f"{tp.topic}:{tp.partition}" for tp in m.assignment],
                    }
                    for m in g.members
                ],
                "lag": sum(r["lag"] for r in rows),
                "partitions": rows,
            }
        )
    hosts = [m.host for m in groups[fold_group(s)].members]
    urls = worker_urls(s, workers, hosts)
    out["workers"] = list(await asyncio.gather(*(asyncio.to_thread(_readyz, u) for u in urls)))
    return out


def render(status: dict[str, Any], verbose: bool) -> str:
    lines = [f"app {status['app_id']}"]
    for g in status["groups"]:
        lines.append("")
        lines.append(
            f"group {g['group']}: {g['state']}, {len(g['members'])} member(s), total lag {g['lag']}"
        )
        for m in g["members"]:
            lines.append(
                f"  member {m['client_id']} on {m['host']}: {len(m['assignment'])} partitions"
            )
        rows = [r for r in g["partitions"] if verbose or r["lag"]]
        if rows:
            lines.append(
                "  "
                + table(
                    ["topic", "partition", "committed", "end", "lag", "owner"],
                    [
                        [r[k] for k in ("topic", "partition", "committed", "end", "lag", "owner")]
                        for r in rows
                    ],
                ).replace("\n", "\n  ")
            )
        if not verbose and len(rows) < len(g["partitions"]):
            lines.append(
                f"  ({len(g['partitions']) - len(rows)} partitions without lag; --all shows them)"
            )
    lines.append("")
    if not status["workers"]:
        lines.append("workers: none found (no fold member; pass --worker URL to probe one)")
    for w in status["workers"]:
        state = "ready" if w["ready"] else "NOT READY"
        extra = w.get("detail") or w.get("error") or ""
        lines.append(
            f"worker {w['url']}: {state} {orjson.dumps(extra).decode() if extra else ''}".rstrip()
        )
    return "\n".join(lines)
