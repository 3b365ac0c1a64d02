"""The `receipt-streams` console script."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import sys

from receipt_streams.config import Settings


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _cmd_worker(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.worker import run_worker

    return run_worker(Settings())


def _cmd_api(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.api import run_api

    return run_api(Settings())


def _cmd_relays(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.relays import run_relays

    return run_relays(Settings())


def _cmd_topics(args: argparse.Namespace) -> int:
    from receipt_streams.adapters.topics import ensure_topics

    created = asyncio.run(ensure_topics(Settings()))
    print("created: " + (", ".join(created) if created else "nothing, all topics exist"))
    return 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.schemas import write_schemas

    for path in write_schemas(args.out):
        print(path)
    return 0


def _cmd_demo_seed(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.demo import ROOM, seed

    count = asyncio.run(seed(Settings()))
    print(
        f"seeded {count} records: room {ROOM}, @alice:localhost and @bob:localhost joined, "
        "events $demo1..$demo5"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from receipt_streams.ops.export import export, render
    from receipt_streams.ops.output import CtlError, print_json, report_error
    from receipt_streams.ops.timespec import parse_time_ms

    try:
        since = parse_time_ms(args.since) if args.since else None
        until = parse_time_ms(args.until) if args.until else None
    except ValueError as exc:
        return report_error(CtlError(str(exc)), args.json)
    out = Path(args.out)
    try:
        manifest = export(Settings(), out, since, until, args.quiet, history=not args.no_history)
    except CtlError as err:
        return report_error(err, args.json)
    if args.json:
        print_json(manifest)
    else:
        print(render(manifest, out))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from receipt_streams.entrypoints.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="receipt-streams",
        description="Matrix read receipts as a Kafka stream processor. Configuration comes "
        "from RECEIPT_STREAMS_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "worker", help="run a worker (joins the consumer group; stops cleanly on SIGINT/SIGTERM)"
    ).set_defaults(func=_cmd_worker)
    sub.add_parser(
        "api",
        help="run the client API and /sync view alone (no tables), "
        "beside workers started with RECEIPT_STREAMS_SERVE_API=false",
    ).set_defaults(func=_cmd_api)
    sub.add_parser(
        "relays",
        help="run the sync-delta and federation-EDU relays alone (no tables), "
        "beside workers started with RECEIPT_STREAMS_RUN_RELAYS=false",
    ).set_defaults(func=_cmd_relays)
    sub.add_parser("topics", help="create the topics the worker needs").set_defaults(
        func=_cmd_topics
    )
    sub.add_parser(
        "demo-seed",
        help="write a demo room's membership and events to the input "
        "topics (what a homeserver would)",
    ).set_defaults(func=_cmd_demo_seed)
    export = sub.add_parser(
        "export",
        help="write the receipts table and the history feed (a time range) to Parquet "
        "(see README, Analytics)",
    )
    export.add_argument("--out", default="export", help="folder (default: export)")
    export.add_argument("--since", metavar="TIME", help="history: receipts with ts at or after")
    export.add_argument("--until", metavar="TIME", help="history: receipts with ts before")
    export.add_argument("--no-history", action="store_true", help="the table only")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(func=_cmd_export)
    bench = sub.add_parser(
        "bench",
        help="measure the pipeline beside the broker's ceiling "
        "(needs KAFKA_BOOTSTRAP_SERVERS or RECEIPT_STREAMS_BOOTSTRAP_SERVERS)",
    )
    bench.add_argument(
        "scenario",
        choices=["fold", "ingest", "latency", "recovery", "memory", "readside", "all"],
    )
    bench.add_argument("--receipts", type=int, default=50_000, help="fold: receipts preloaded")
    bench.add_argument("--requests", type=int, default=20_000, help="ingest: HTTP requests")
    bench.add_argument("--concurrency", type=int, default=64, help="ingest: clients")
    bench.add_argument(
        "--rate",
        type=float,
        default=None,
        help="latency: receipts/s (default 1000); readside: requests/s (default 500)",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=None,
        help="latency: seconds (default 10); readside: seconds of load per endpoint (30)",
    )
    bench.add_argument(
        "--keys",
        type=int,
        default=None,
        help="recovery, memory: distinct table keys (default 1,000,000); readside: receipt "
        "keys in the changelog (default 10,000,000)",
    )
    bench.add_argument("--partitions", type=int, default=4)
    bench.add_argument(
        "--api-processes",
        type=_at_least_one,
        default=1,
        help="readside: API processes sharing the client port (SO_REUSEPORT), each with "
        "its own copy of the view",
    )
    bench.add_argument(
        "--split-api",
        action="store_true",
        help="recovery: a worker without the API's /sync view (serve_api off)",
    )
    bench.add_argument(
        "--relays-inline",
        action="store_true",
        help="fold, memory: the relays in the worker, not in a `receipt-streams relays` process",
    )
    bench.add_argument(
        "--users-per-room", type=int, default=50, help="memory: members (and receipts) per room"
    )
    bench.add_argument(
        "--guarantee",
        choices=["exactly_once", "at_least_once", "both"],
        default="both",
        help="fold and latency: the workers' processing guarantee (both: one run of each)",
    )
    bench.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of each scenario (and guarantee, in turn); with more than one, a summary of "
        "the median and range of every figure",
    )
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--out", default="bench-results", help="folder for the JSON results")
    bench.set_defaults(func=_cmd_bench)
    schemas = sub.add_parser("schemas", help="write the topics' JSON Schemas")
    schemas.add_argument("--out", default="schemas", help="folder (default: schemas)")
    schemas.set_defaults(func=_cmd_schemas)
    # import-synapse (issue 13, migration in): arguments and handler live with the importer.
    from receipt_streams.migrate.cli import add_import_synapse

    add_import_synapse(sub)
    # Operators' tool: `receipt-streams ctl status|reset|rebuild|diff|dlq|inspect`.
    from receipt_streams.ops.cli import add_ctl

    add_ctl(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A crash in native code (RocksDB, a C extension) then leaves the Python stacks of every
    # thread in the log, not only the exit status.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
