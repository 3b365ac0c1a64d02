"""`ctl status`: the app's consumer groups, their members and assignments, the lag of every
partition, and each worker's /readyz."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson
from aiokafka import TopicPartition

from receipt_streams.adapters.client_ids import web_port_of
from receipt_streams.config import Settings
from receipt_streams.ops import kafka
from receipt_streams.ops.groups import app_groups
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


def member_url(s: Settings, host: str, client_id: str) -> str:
    """Where a member answers HTTP: its host as the broker saw it, on the web port its
    client id names (RECEIPT_STREAMS_WEB_PORT when it names none)."""
    port = web_port_of(client_id) or s.web_port
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def worker_urls(
    s: Settings, explicit: list[str], members: list[tuple[str, str, str]]
) -> dict[str, list[str]]:
    """URL -> the groups found there: the --worker URLs given, else one per distinct member
    address, from (group, host, client id) of every member of the app's groups."""
    if explicit:
        return {u.rstrip("/"): [] for u in explicit}
    urls: dict[str, list[str]] = {}
    for group, host, client_id in members:
        found = urls.setdefault(member_url(s, host, client_id), [])
        if group not in found:
            found.append(group)
    return dict(sorted(urls.items()))


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
                        "url": member_url(s, m.host, m.client_id),
                        "assignment": [f"{tp.topic}:{tp.partition}" for tp in m.assignment],
                    }
                    for m in g.members
                ],
                "lag": sum(r["lag"] for r in rows),
                # The ticks are wall-clock beats, a few always in flight: not work to do.
                "inputs_lag": sum(r["lag"] for r in rows if r["topic"] != s.topic_ticks),
                "partitions": rows,
            }
        )
    members = [(g, m.host, m.client_id) for g in wanted for m in groups[g].members]
    urls = worker_urls(s, workers, members)
    probed = await asyncio.gather(*(asyncio.to_thread(_readyz, u) for u in urls))
    out["workers"] = [{**p, "groups": urls[p["url"]]} for p in probed]
    return out


def render(status: dict[str, Any], verbose: bool) -> str:
    lines = [f"app {status['app_id']}"]
    for g in status["groups"]:
        lines.append("")
        head = f"group {g['group']}: {g['state']}, {len(g['members'])} member(s), lag {g['lag']}"
        if g["inputs_lag"] != g["lag"]:
            head += f" ({g['inputs_lag']} on the inputs; the rest wall-clock ticks in flight)"
        lines.append(head)
        for m in g["members"]:
            lines.append(
                f"  member {m['client_id']} at {m['url']}: {len(m['assignment'])} partitions"
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
        lines.append("workers: none found (no group member; pass --worker URL to probe one)")
    for w in status["workers"]:
        state = "ready" if w["ready"] else "NOT READY"
        groups = f" ({', '.join(w['groups'])})" if w.get("groups") else ""
        extra = w.get("detail") or w.get("error") or ""
        lines.append(
            f"worker {w['url']}{groups}: {state} "
            f"{orjson.dumps(extra).decode() if extra else ''}".rstrip()
        )
    return "\n".join(lines)
