"""The `import-synapse` subcommand's arguments and handler (registered by entrypoints/cli.py;
imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson


def add_import_synapse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-synapse",
        help="copy a Synapse's read receipts (receipts_linearized), and the membership and "
        "events they need, into the input topics (README: Migrating from Synapse)",
    )
    p.add_argument(
        "database",
        help="Synapse's SQLite file (homeserver.db), or a postgresql:// URL (needs the "
        "synapse-postgres extra)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="read and count what would be written; write nothing"
    )
    p.add_argument(
        "--receipts-only",
        action="store_true",
        help="write only receipts: when the homeserver already fed rooms.membership.v1 and "
        "rooms.events.v1 with the rooms' history",
    )
    p.add_argument(
        "--after-stream-id",
        type=int,
        default=0,
        help="only receipts with a larger stream_id: resume an interrupted import from the "
        "last_stream_id it printed",
    )
    p.add_argument("--page", type=int, default=5000, help="rows read and written per page")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_import_synapse)


def _cmd_import_synapse(args: argparse.Namespace) -> int:
    from receipt_streams.config import Settings
    from receipt_streams.migrate.synapse_import import import_synapse

    s = Settings()
    summary = asyncio.run(
        import_synapse(
            s,
            args.database,
            dry_run=args.dry_run,
            with_rooms=not args.receipts_only,
            after=args.after_stream_id,
            page=args.page,
            progress=sys.stderr.isatty(),
        )
    )
    if args.json:
        print(orjson.dumps(summary.as_dict()).decode())
        return 0
    verb = "would write" if args.dry_run else "wrote"
    print(
        f"{verb}: {summary.client_receipts} client receipts to {s.topic_client}, "
        f"{summary.federation_receipts} remote receipts in {summary.federation_edus} EDUs to "
        f"{s.topic_federation}, {summary.membership} memberships to {s.topic_membership}, "
        f"{summary.events} events to {s.topic_events} "
        f"({summary.receipts_read} receipt rows read from {summary.database})"
    )
    if summary.skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.items())
        print(f"skipped: {reasons} (README: Migrating from Synapse)")
    if summary.last_stream_id is not None:
        print(
            f"last stream_id: {summary.last_stream_id} "
            f"(to resume or catch up later: --after-stream-id {summary.last_stream_id})"
        )
    return 0
