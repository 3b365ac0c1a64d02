"""`receipt-streams bench`: run scenarios, print a table each, write JSON results."""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from typing import Any

from receipt_streams.bench.measure import print_table, write_result
from receipt_streams.bench.scenarios import (
    Bench,
    bench_fold,
    bench_ingest,
    bench_latency,
    bench_recovery,
)
from receipt_streams.bench.summary import shown, summarize
from receipt_streams.config import Settings
from receipt_streams.entrypoints.running import run_loop


def _rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in result.items()]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    b = Bench(Settings().bootstrap_servers, seed=args.seed, partitions=args.partitions)
    chosen = (
        ["fold", "ingest", "latency", "recovery"] if args.scenario == "all" else [args.scenario]
    )
    guarantees = ["exactly_once", "at_least_once"] if args.guarantee == "both" else [args.guarantee]
    keys = args.keys or 1_000_000
    runs = {
        "fold": lambda: bench_fold(b, args.receipts, relays_apart=not args.relays_inline),
        "ingest": lambda: bench_ingest(b, args.requests, args.concurrency),
        "latency": lambda: bench_latency(b, args.rate or 1000.0, args.duration or 10.0),
        "recovery": lambda: bench_recovery(b, keys, serve_api=not args.split_api),
    }
    from receipt_streams.bench.memory import bench_memory  # not in "all": slow, RSS only
    from receipt_streams.bench.readside import bench_readside  # not in "all": 10M keys

    runs["memory"] = lambda: bench_memory(
        b, keys, relays_apart=not args.relays_inline, users_per_room=args.users_per_room
    )
    runs["readside"] = lambda: bench_readside(
        b, args.keys or 10_000_000, args.rate or 500.0, args.duration or 30.0, args.api_processes
    )
    results: dict[str, Any] = {}
    per_job: dict[str, list[dict[str, Any]]] = {}
    # Run after run, each guarantee in turn: both see the same drift of the machine.
    jobs = [
        (run, name, guarantee)
        for name in chosen
        for run in range(1, args.runs + 1)
        for guarantee in (guarantees if name in ("fold", "latency") else guarantees[:1])
    ]
    for run, name, guarantee in jobs:
        b.guarantee = guarantee
        started = time.time()
        result = await runs[name]()
        result["guarantee"] = guarantee
        if name in ("fold", "latency") and len(guarantees) > 1:
            name = f"{name}-{guarantee}"
        result["machine"] = {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        }
        result["started_at"] = started
        per_job.setdefault(name, []).append(result)
        label = f"{name}-run{run}" if args.runs > 1 else name
        results[label] = result
        print_table(
            f"bench {label}",
            _rows({k: v for k, v in result.items() if k not in ("machine", "started_at")}),
        )
        print(f"-> {write_result(Path(args.out), label, result)}")
    if args.runs > 1:
        for name, done in per_job.items():
            summary = summarize(
                [{k: v for k, v in r.items() if k not in ("machine", "started_at")} for r in done]
            )
            results[f"{name}-summary"] = summary
            print_table(f"bench {name}: median (min-max) of {len(done)} runs", shown(summary))
            print(f"-> {write_result(Path(args.out), f'{name}-summary', summary)}")
    return results


def run_bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    # The bench's own watchers and producers on the same loop as the processes it measures.
    run_loop(Settings(), _run(args))
    return 0
