"""`receipt-streams ctl ...`: the argument parser and the dispatch of each command.

Every command takes --json; refusals raise CtlError, printed with what to do about them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from receipt_streams.config import Settings
from receipt_streams.ops.output import CtlError, print_json, report_error, table


def add_ctl(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="operate a deployment: status, reset, rebuild, diff, dlq, inspect, purge-room, "
        "erase-user "
        "(see README, Operating)",
    )
    ctl.set_defaults(func=run)
    cmds = ctl.add_subparsers(dest="ctl_command", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    status = cmd("status", "consumer groups, members, assignment, lag, worker readiness")
    status.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="URL",
        help="a worker's HTTP address (repeatable); default: each fold member's host on "
        "RECEIPT_STREAMS_WEB_PORT",
    )
    status.add_argument("--all", action="store_true", help="show partitions without lag too")

    reset = cmd("reset", "move the fold's input offsets to replay (stop the workers first)")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true", help="skip everything not yet folded")
    to.add_argument(
        "--to-datetime", metavar="TIME", help="ISO 8601 (naive: UTC), epoch ms, or an age (2h)"
    )
    to.add_argument("--to-offset", type=int, metavar="N", help="the same offset on every partition")
    to.add_argument("--shift-by", type=int, metavar="N", help="+N forward, -N back from the commit")
    reset.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    reset.add_argument(
        "--force", action="store_true", help="go on although the group lists members"
    )
    reset.add_argument(
        "--wipe-local",
        action="append",
        default=[],
        type=Path,
        metavar="DATA_DIR",
        help="also wipe this stopped worker's local stores (repeatable)",
    )

    rebuild = cmd("rebuild", "wipe a worker's local state, or build a second app version")
    how = rebuild.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--local", type=Path, metavar="DATA_DIR", help="wipe a stopped worker's stores"
    )
    how.add_argument("--into", metavar="APP_ID2", help="fold the inputs into APP_ID2's changelogs")
    rebuild.add_argument(
        "--data-dir", type=Path, help="--into: the new worker's state (default .local/APP_ID2)"
    )
    rebuild.add_argument("--timeout", type=float, default=3600, help="--into: seconds")
    rebuild.add_argument("--diff", action="store_true", help="--into: then diff against the app")
    rebuild.add_argument("--dry-run", action="store_true", help="--local: say what would go")

    diff = cmd("diff", "compare two app versions' receipts tables (last value per key)")
    diff.add_argument("app1")
    diff.add_argument("app2")

    dlq = cmd("dlq", "list, count, show and re-drive DLQ records")
    dlq.add_argument("action", choices=["list", "count", "show", "redrive"])
    dlq.add_argument("ids", nargs="*", metavar="ID", help="PARTITION:OFFSET of the DLQ topic")
    dlq.add_argument("--reason", action="append", default=[], help="error code (repeatable)")
    dlq.add_argument("--since", metavar="TIME", help="rejected at or after (ISO, ms, or 2h)")
    dlq.add_argument("--until", metavar="TIME", help="rejected before")
    dlq.add_argument("--source-topic", action="append", default=[], metavar="TOPIC")
    dlq.add_argument("--limit", type=int, default=50, help="list: most records shown (0: all)")
    dlq.add_argument("--all", action="store_true", help="redrive: every record (no filter)")
    dlq.add_argument("--dry-run", action="store_true", help="redrive: list what would go")

    purge = cmd("purge-room", "remove a room's receipts, room state and held receipts")
    purge.add_argument("room_id")
    purge.add_argument("--reason", help="free text kept with the command (audit)")
    erase = cmd("erase-user", "remove a user's receipts in every room (one copy per partition)")
    erase.add_argument("user_id")
    erase.add_argument("--reason", help="free text kept with the command (audit)")

    inspect = cmd("inspect", "current receipts of a room, a user or an event, from the table")
    inspect.add_argument("--room")
    inspect.add_argument("--user")
    inspect.add_argument("--event")


def run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace, Settings], Awaitable[int]] = HANDLERS[args.ctl_command]
    try:
        return asyncio.run(handler(args, Settings()))
    except CtlError as err:
        return report_error(err, args.json)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


async def _status(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import status

    data = await status.gather_status(s, args.worker)
    _out(args, data, status.render(data, args.all))
    return 0


async def _reset(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import local_state, reset
    from receipt_streams.ops.timespec import parse_time_ms

    if args.to_earliest:
        target = reset.Target("earliest")
    elif args.to_latest:
        target = reset.Target("latest")
    elif args.to_datetime is not None:
        try:
            target = reset.Target("datetime", parse_time_ms(args.to_datetime))
        except ValueError as exc:
            raise CtlError(str(exc)) from None
    elif args.to_offset is not None:
        target = reset.Target("offset", args.to_offset)
    else:
        target = reset.Target("shift", args.shift_by)
    moves, group = await reset.read_plan(s, target)
    if group.members and not args.force and not args.dry_run:
        raise reset.members_error(group)
    wiped: list[str] = []
    if not args.dry_run:
        for data_dir in args.wipe_local:  # checked before anything moves
            if busy := local_state.users(data_dir):
                raise CtlError(f"{data_dir} is in use: " + "; ".join(busy), "stop that worker")
        await reset.commit(s, moves, s.session_timeout_s * 2 if args.force else 5)
        for data_dir in args.wipe_local:
            wiped += local_state.wipe(data_dir)
    data = reset.summary(moves, target, applied=not args.dry_run)
    data["wiped"] = wiped
    text = reset.render_plan(moves, target)
    if group.members:
        who = ", ".join(sorted(f"{m.client_id}@{m.host}" for m in group.members))
        text += f"\nnote: group {group.group_id!r} lists {len(group.members)} member(s) ({who})"
        text += ": stop them before applying." if args.dry_run else "."
    if args.dry_run:
        text += "\ndry run: nothing was moved."
    else:
        text += f"\napplied: group {group.group_id!r} committed at the new offsets."
        text += "".join(f"\nwiped {w}" for w in wiped)
    text += "\n\n" + reset.STATE_NOTE
    _out(args, data, text)
    return 0


async def _rebuild(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import local_state, rebuild

    if args.local is not None:
        removed = local_state.wipe(args.local, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        text = "\n".join(f"{verb} {r}" for r in removed) or f"nothing to remove in {args.local}"
        if not args.dry_run:
            text += "\nthe worker restores its stores from the changelogs at its next start"
        _out(args, {"removed": removed, "dry_run": args.dry_run}, text)
        return 0
    data_dir = args.data_dir or Path(".local") / args.into
    result = await rebuild.rebuild_into(s, args.into, data_dir, args.timeout, args.quiet)
    text = (
        f"built {args.into} from {result['records']} input records in {result['seconds']} s "
        f"into {result['changelog']} (state {result['data_dir']}, log {result['log']})"
    )
    code = 0
    if args.diff:
        d = await rebuild.diff(s, s.app_id, args.into, args.quiet)
        result["diff"] = d
        text += "\n" + rebuild.render_diff(d)
        code = 1 if d["differences"] else 0
    else:
        text += f"\nnext: receipt-streams ctl diff {s.app_id} {args.into}"
    _out(args, result, text)
    return code


async def _diff(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import rebuild

    d = await rebuild.diff(s, args.app1, args.app2, args.quiet)
    _out(args, d, rebuild.render_diff(d))
    return 1 if d["differences"] else 0


def _filters(args: argparse.Namespace) -> Any:
    from receipt_streams.ops import dlq
    from receipt_streams.ops.timespec import parse_time_ms

    try:
        since = parse_time_ms(args.since) if args.since else None
        until = parse_time_ms(args.until) if args.until else None
    except ValueError as exc:
        raise CtlError(str(exc)) from None
    return dlq.Filters(
        frozenset(args.reason),
        since,
        until,
        frozenset(args.source_topic),
        frozenset(dlq.parse_id(i) for i in args.ids),
    )


async def _dlq(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import dlq

    if args.action == "show":
        if len(args.ids) != 1:
            raise CtlError("dlq show takes one id", "e.g. receipt-streams ctl dlq show 0:42")
        e = await dlq.read_one(s, *dlq.parse_id(args.ids[0]))
        data = dlq.shown(e)
        done = await dlq.read_done(s, quiet=True)
        data["redriven"] = done.get(dlq.ledger_key(s, e))
        _out(args, data, "\n".join(f"{k}: {_fmt(v)}" for k, v in data.items()))
        return 0
    filters = _filters(args)
    selected = [e for e in await dlq.read_entries(s, args.quiet) if filters.match(e)]
    if args.action == "count":
        data = dlq.counts(selected)
        text = f"{data['total']} DLQ record(s)\n\nby reason:\n" + table(
            ["reason", "records"], list(data["by_reason"].items())
        )
        text += "\n\nby hour (UTC):\n" + table(["hour", "records"], list(data["by_hour"].items()))
        _out(args, data, text)
        return 0
    if args.action == "list":
        shown = selected[-args.limit :] if args.limit else selected
        rows = [dlq.summary_row(e) for e in shown]
        cols = ["id", "time", "reason", "source", "key", "message"]
        text = table(cols, [[r[c] for c in cols] for r in rows]) if rows else "no DLQ records match"
        if len(shown) < len(selected):
            text += f"\n(the last {len(shown)} of {len(selected)}; --limit 0 shows all)"
        _out(args, {"total": len(selected), "records": rows}, text)
        return 0
    return await _redrive(args, s, filters, selected)


async def _redrive(args: argparse.Namespace, s: Settings, filters: Any, selected: list) -> int:
    from receipt_streams.ops import dlq

    if filters.empty and not args.all:
        raise CtlError(
            "no records selected",
            "select with ids, --reason, --since/--until or --source-topic, or pass --all",
        )
    missing = filters.ids - {(e.partition, e.offset) for e in selected}
    if missing:
        ids = ", ".join(f"{p}:{o}" for p, o in sorted(missing))
        raise CtlError(f"no DLQ record {ids}", "take ids from `receipt-streams ctl dlq list`")
    done = await dlq.read_done(s, args.quiet)
    decisions = dlq.plan_redrive(s, selected, set(done))
    sent = [] if args.dry_run else await dlq.redrive(s, decisions, args.quiet)
    rows = [
        {"id": d.entry.id, "reason": d.entry.reason, "send": d.send, "why": d.why}
        for d in decisions
    ]
    verb = "would re-drive" if args.dry_run else "re-drove"
    count = sum(d.send for d in decisions)
    text = table(["id", "reason", "send", "why"], [list(r.values()) for r in rows]) if rows else ""
    text += f"\n{verb} {count} of {len(decisions)} selected record(s)"
    text += f"; ledger: {dlq.ledger_topic(s)}"
    _out(args, {"dry_run": args.dry_run, "decisions": rows, "sent": sent}, text.strip())
    refused = [d for d in decisions if not d.send and d.why.startswith("truncated")]
    return 3 if refused and filters.ids else 0


def _fmt(v: Any) -> str:
    from receipt_streams.ops.output import dump_json

    return v if isinstance(v, str) else dump_json(v)


async def _inspect(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import inspect, kafka

    if not (args.room or args.user or args.event):
        raise CtlError("nothing to inspect", "pass --room, --user and/or --event")
    entries = await kafka.read_table(s, s.changelog_receipts, args.quiet)
    found = inspect.rows(entries, args.room, args.user, args.event)
    _out(args, {"receipts": found}, inspect.render(found))
    return 0


async def _purge_room(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import admin

    result = await admin.send_command(s, "purge_room", args.room_id, args.reason)
    _out(args, result, admin.render(result))
    return 0


async def _erase_user(args: argparse.Namespace, s: Settings) -> int:
    from receipt_streams.ops import admin

    result = await admin.send_command(s, "erase_user", args.user_id, args.reason)
    _out(args, result, admin.render(result))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]] = {
    "purge-room": _purge_room,
    "erase-user": _erase_user,
    "status": _status,
    "reset": _reset,
    "rebuild": _rebuild,
    "diff": _diff,
    "dlq": _dlq,
    "inspect": _inspect,
}
